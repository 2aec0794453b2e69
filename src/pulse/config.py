"""Experiment config: a YAML file + dotted `key=value` overrides -> one validated `RunConfig`.

Unknown keys, unknown methods/targets, fold counts that do not divide the unlearn set and missing paths are
one-line `PulseError`s raised before any training starts.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import PulseError


@dataclass
class ModelConfig:
    pretrained: str | None = None  # base checkpoint (pre-trained knowledge); None = the mini world's
    finetuned: str | None = None  # fine-tuned on the fictional people; None = the mini world's
    dtype: str = "float32"
    device: str = "cpu"
    template: str | None = None  # None = the checkpoint's own (pulse_model.json) or LLaVA-1.5
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    mllmu: str | None = None  # local MLLMU-Bench clone; None = the mini world's
    mmbench: str | None = None  # MMBench TSV; None = the mini world's
    fictional: str = "Full_Set"
    celebrities: str = "Retain_Set"
    train: str = "ft_Data"  # training-flavour QA of the fictional people (forget/retain data)


@dataclass
class MiniConfig:
    cache: str = "~/.cache/pulse"  # where the built mini world is kept between runs (env PULSE_CACHE wins)
    seed: int = 0
    size: str = "default"  # "default" (the targets in the README) or "small" (tests, CI: seconds)


@dataclass
class FinetunedScenario:
    people: int = 40  # fictional people (paper: 100); the model must have been fine-tuned on them
    unlearn: int = 20  # paper: 50


@dataclass
class PretrainedScenario:
    select: int = 18  # best-known celebrities kept (paper: 45 of 153)
    unlearn: int = 8  # paper: 20 (the other select - unlearn are retained: paper 25)
    min_accuracy: float = 0.0  # also require at least this base accuracy (percent, both forms averaged)


@dataclass
class SustainabilityScenario:
    folds: int = 5  # D_unlearn (the fine-tuned scenario's) split into this many sequential requests


@dataclass
class Scenarios:
    finetuned: FinetunedScenario = field(default_factory=FinetunedScenario)
    pretrained: PretrainedScenario = field(default_factory=PretrainedScenario)
    sustainability: SustainabilityScenario = field(default_factory=SustainabilityScenario)


@dataclass
class UnlearnSection:
    steps: int = 20
    lr: float = 1e-3
    batch_size: int = 16
    mode: str = "lora"
    lora_rank: int = 8
    lora_alpha: int = 16
    mask: str = "answer"
    params: dict = field(default_factory=dict)


@dataclass
class EvalSection:
    scoring: str | None = None  # None = the model's default (likelihood for the mini model, generate otherwise)
    demo_people: int = 1
    demo_seed: int = 0
    max_new_tokens: int = 50
    batch_size: int = 64
    mmbench_groups: int | None = None  # seeded subset of MMBench groups for quick runs (labelled); None = all


@dataclass
class RunConfig:
    name: str = "mini"
    scenarios: list[str] = field(default_factory=lambda: ["finetuned", "pretrained", "sustainability"])
    methods: list[str] = field(default_factory=lambda: ["ga", "ga_klr", "npo"])
    targets: list[str] = field(default_factory=lambda: ["proj+llm"])
    table3_targets: list[str] = field(default_factory=lambda: ["llm"])  # extra targets, finetuned scenario, ga
    table3_methods: list[str] = field(default_factory=lambda: ["ga"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    save_adapters: bool = False  # keep each request's adapter (safetensors) after the run
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mini: MiniConfig = field(default_factory=MiniConfig)
    scenario: Scenarios = field(default_factory=Scenarios)
    unlearn: UnlearnSection = field(default_factory=UnlearnSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @property
    def uses_mini(self) -> bool:
        return self.data.mllmu is None


SCENARIOS = ("finetuned", "pretrained", "sustainability")


def _build(cls, data, where: str):
    """Dataclass from a dict, recursively; unknown keys and wrong types are errors naming the key."""
    if not isinstance(data, dict):
        raise PulseError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise PulseError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, hint, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value, hint, where: str):
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise PulseError(f"{where}: must not be null")
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, args[0], where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise PulseError(f"{where}: expected a mapping")
        return value
    target = args[0] if args else hint
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if target is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise PulseError(f"{where}: expected {target.__name__}, got {value!r}")
    return value


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise PulseError(f"override {dotted}: {k!r} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML (or the built-in mini defaults when `path` is None), apply overrides, validate."""
    tree: dict = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise PulseError(f"{p}: config file not found")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise PulseError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from None
    for item in overrides:
        if "=" not in item:
            raise PulseError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw)
    cfg = _build(RunConfig, tree, where)
    validate(cfg, where)
    return cfg


def validate(cfg: RunConfig, where: str) -> None:
    from .models.targets import TARGETS
    from .unlearn.loop import check_method_mode

    for s in cfg.scenarios:
        if s not in SCENARIOS:
            raise PulseError(f"{where}: scenarios: unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    for m in cfg.methods + cfg.table3_methods:
        check_method_mode(m, cfg.unlearn.mode)
    for t in cfg.targets + cfg.table3_targets:
        if t not in TARGETS:
            raise PulseError(f"{where}: unknown update target {t!r} (known: {', '.join(TARGETS)})")
    if not cfg.seeds or not cfg.methods or not cfg.targets:
        raise PulseError(f"{where}: seeds, methods and targets must not be empty")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise PulseError(f"{where}: seeds: duplicate seed")
    ft, pt, su = cfg.scenario.finetuned, cfg.scenario.pretrained, cfg.scenario.sustainability
    if not 0 < ft.unlearn < ft.people:
        raise PulseError(f"{where}: scenario.finetuned.unlearn must be between 1 and people - 1 ({ft.people})")
    if not 0 < pt.unlearn < pt.select:
        raise PulseError(f"{where}: scenario.pretrained.unlearn must be between 1 and select - 1 ({pt.select})")
    if "sustainability" in cfg.scenarios and (su.folds < 1 or ft.unlearn % su.folds):
        raise PulseError(f"{where}: scenario.sustainability.folds={su.folds} does not divide the unlearn set "
                         f"(scenario.finetuned.unlearn={ft.unlearn})")
    if cfg.mini.size not in ("default", "small"):
        raise PulseError(f"{where}: mini.size must be default or small, got {cfg.mini.size!r}")
    if cfg.eval.scoring not in (None, "likelihood", "generate"):
        raise PulseError(f"{where}: eval.scoring must be likelihood or generate, got {cfg.eval.scoring!r}")
    if cfg.unlearn.mask not in ("answer", "sequence"):
        raise PulseError(f"{where}: unlearn.mask must be answer or sequence, got {cfg.unlearn.mask!r}")
    if cfg.unlearn.steps < 1 or cfg.unlearn.lr <= 0:
        raise PulseError(f"{where}: unlearn.steps must be >= 1 and unlearn.lr > 0")
    paths = [("data.mllmu", cfg.data.mllmu), ("data.mmbench", cfg.data.mmbench),
             ("model.pretrained", cfg.model.pretrained), ("model.finetuned", cfg.model.finetuned)]
    given = [name for name, v in paths if v is not None]
    if given and len(given) != len(paths):
        missing = [name for name, v in paths if v is None]
        raise PulseError(f"{where}: real-data runs need all of data.mllmu, data.mmbench, model.pretrained, "
                         f"model.finetuned; missing: {', '.join(missing)}")
    for name, v in paths:
        hub_ok = name.startswith("model.") and _looks_like_hub_id(v or "")
        if v is not None and not Path(v).expanduser().exists() and not hub_ok:
            raise PulseError(f"{where}: {name}: path not found: {v}")


def _looks_like_hub_id(v: str) -> bool:
    return v.count("/") == 1 and not v.startswith((".", "/", "~"))


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)
