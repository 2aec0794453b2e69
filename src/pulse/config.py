"""Experiment config: a YAML file + dotted `key=value` overrides -> one validated `RunConfig`.

Unknown keys, unknown methods/targets, fold counts that do not divide the unlearn set and missing paths are
one-line `PulseError`s raised before any training starts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import yaml

from .errors import PulseError
from .mini.cache import MiniConfig
from .models.load import DTYPES, check_device_dtype
from .models.targets import TARGETS
from .schema import coerce, from_dict
from .unlearn.methods import check_method_mode, check_params, get_method
from .unlearn.recipe import FinetuneSection, Recipe, StopRule, UnlearnSection, validate_recipe

__all__ = ["RunConfig", "MiniConfig", "Recipe", "StopRule", "UnlearnSection", "FinetuneSection", "load_config",
           "load_finetune", "from_manifest", "to_dict", "validate_recipe", "method_references"]


@dataclass
class ModelConfig:
    pretrained: str | None = None  # base checkpoint (pre-trained knowledge); None = the mini world's
    finetuned: str | None = None  # fine-tuned on the fictional people; None = the mini world's
    dtype: str = "float32"  # float32, bfloat16, float16, or auto (bfloat16 on cuda, float32 on cpu)
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto (cuda if available, else cpu)
    template: str | None = None  # None = the checkpoint's own (pulse_model.json) or LLaVA-1.5
    trust_remote_code: bool = False

    def __post_init__(self):  # spelling only: the machine that runs may not be the one that validates
        for key, args in (("device", (self.device, "auto")), ("dtype", ("auto", self.dtype))):
            try:
                check_device_dtype(*args)
            except PulseError as e:
                raise PulseError(f"model.{key}: {e}") from None


@dataclass
class DataConfig:
    mllmu: str | None = None  # local MLLMU-Bench clone; None = the mini world's
    mmbench: str | None = None  # MMBench TSV; None = the mini world's
    fictional: str = "Full_Set"
    celebrities: str = "Retain_Set"
    train: str = "ft_Data"  # training-flavour QA of the fictional people (forget/retain data)


@dataclass
class FinetunedScenario:
    people: int = 40  # fictional people (paper: 100); the model must have been fine-tuned on them
    unlearn: int = 20  # paper: 50
    # The retrained oracle (fine-tuned on the retained people only): None = none; "build" = retrain it from the
    # mini world's pre-trained model with the world's recipe (mini world only); else a checkpoint directory,
    # "{seed}" replaced by the split seed (made with `pulse finetune --people`).
    oracle: str | None = None


@dataclass
class PretrainedScenario:
    select: int = 18  # best-known celebrities kept (paper: 45 of 153)
    unlearn: int = 8  # paper: 20 (the other select - unlearn are retained: paper 25)
    min_accuracy: float = 0.0  # also require at least this base accuracy (percent, both forms averaged)
    # LoRA or full-parameter updates here: the paper states LoRA only for the other two scenarios. None = unlearn.mode
    mode: str | None = None


@dataclass
class SustainabilityScenario:
    folds: int = 5  # D_unlearn (the fine-tuned scenario's) split into this many sequential requests


@dataclass
class Scenarios:
    finetuned: FinetunedScenario = field(default_factory=FinetunedScenario)
    pretrained: PretrainedScenario = field(default_factory=PretrainedScenario)
    sustainability: SustainabilityScenario = field(default_factory=SustainabilityScenario)


@dataclass
class EvalSection:
    scoring: str | None = None  # None = the model's default (likelihood for the mini model, generate otherwise)
    demo_people: int = 1
    demo_seed: int = 0
    max_new_tokens: int = 50
    batch_size: int = 64
    mmbench_groups: int | None = None  # seeded subset of MMBench groups for quick runs (labelled); None = all
    mmbench_max_new_tokens: int = 1024  # MMBench generate scoring; LLaVA's model_vqa_mmbench: 1024, stops at EOS
    mmbench_image: str = "pad"  # LLaVA-1.5 pads images to a square (mean colour) first; "processor": llava-hf's alone
    every: int = 0  # trade-off curve: a cheap evaluation every N optimizer steps (+ step 0, budget, end); 0 = none
    curve_mmbench_groups: int | None = 16  # MMBench groups (seeded by half_seed) at curve points; None = all
    half_seed: int = 0  # seeds the selection / held-out question halves (protocol/halves.py)
    # MLLMU-Bench's tasks at every request-level evaluation: mcq (always), cloze, generation (protocol/open_tasks.py)
    tasks: list[str] = field(default_factory=lambda: ["mcq", "cloze", "generation"])
    cloze_demo_people: int = 2  # cloze few-shot demo people (MLLMU-Bench's LLaVA branch: 2; celebrities: 0)
    mia: bool = True  # membership inference at every request-level evaluation (protocol/membership.py)
    mia_nonmembers: int = 100  # held-out fictional people (Full_Set after the fine-tuned ones, by ID) scored


@dataclass
class RelearnProbe:
    """The relearning attack (protocol/probes.py): the unlearning recipe (LoRA settings, clipping, mask, EOS) with
    this small fixed budget, constant lr, on half of D_unlearn's people."""
    steps: int = 10  # optimizer steps (full batches cycling through the attacked half's samples)
    lr: float | None = None  # None = unlearn.lr
    batch_size: int | None = None  # None = unlearn.batch_size
    target: str = "proj+llm"  # the attack's LoRA update target (the same for every cell and the control)


@dataclass
class ProbesSection:
    """Probes of real forgetting (protocol/probes.py), run on the model after a cell's last request."""
    run: list[str] = field(default_factory=list)  # opt-in (relearn, routes, quant); the mini default runs all
    scenarios: list[str] = field(default_factory=lambda: ["finetuned", "pretrained"])  # others in the run: skipped
    relearn: RelearnProbe = field(default_factory=RelearnProbe)
    quant_bits: list[int] = field(default_factory=lambda: [8, 4])  # probe names quant8, quant4
    name_only: str = "substitute"  # name-only question: "substitute" the person phrase, or "prefix" the name


PROBES = ("relearn", "routes", "quant")


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
    probes: ProbesSection = field(default_factory=ProbesSection)
    # equal search budget (protocol/plan.py `variants`): method -> {lr or a method parameter: [values]}
    sweep: dict = field(default_factory=dict)

    @property
    def uses_mini(self) -> bool:
        return self.data.mllmu is None


SCENARIOS = ("finetuned", "pretrained", "sustainability")


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise PulseError(f"override {dotted}={raw}: empty key (expected dotted keys, e.g. unlearn.lr=1e-4)")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise PulseError(f"override {dotted}: {k!r} is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PulseError(f"override {dotted}={raw}: invalid YAML value ({problem}); "
                         f"e.g. methods=[ga,npo] or 'name=a b'") from None


def _apply_overrides(tree: dict, overrides) -> None:
    for item in overrides:
        if "=" not in item:
            raise PulseError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML (or the built-in mini defaults, configs/mini/default.yaml, when `path` is None), apply overrides,
    validate. The dataclass defaults are the paper/MLLMU-Bench values; the mini's own recipe lives in its YAML."""
    tree: dict = {}
    where = "defaults"
    if path is None:
        path = builtin_config_path()
    if path is not None:
        where = str(path)
        p = Path(path)
        if p.is_dir():
            raise PulseError(f"{p}: is a directory, not a YAML config file")
        if not p.is_file():
            raise PulseError(f"{p}: config file not found")
        try:
            tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            line = p.read_bytes()[: e.start].count(b"\n") + 1
            raise PulseError(f"{p}, line {line}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                             f"save the config as UTF-8") from None
        except yaml.YAMLError as e:
            raise PulseError(f"{p}: invalid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(tree, dict):
            raise PulseError(f"{p}: expected a mapping of key: value at the top level, got {type(tree).__name__}")
    _apply_overrides(tree, overrides)
    cfg = from_dict(RunConfig, tree, where)
    validate(cfg, where)
    return cfg


def validate(cfg: RunConfig, where: str) -> None:
    for s in cfg.scenarios:
        if s not in SCENARIOS:
            raise PulseError(f"{where}: scenarios: unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    for m in cfg.methods + cfg.table3_methods:
        check_method_mode(m, cfg.unlearn.mode)
    if "pretrained" in cfg.scenarios and cfg.scenario.pretrained.mode in ("lora", "full"):
        for m in cfg.methods:
            check_method_mode(m, cfg.scenario.pretrained.mode)
    cfg.unlearn.params = check_params(cfg.methods + cfg.table3_methods, cfg.unlearn.params, where)
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
    validate_basics(cfg, where)
    if "mcq" not in cfg.eval.tasks or set(cfg.eval.tasks) - {"mcq", "cloze", "generation"}:
        raise PulseError(f"{where}: eval.tasks must hold mcq and any of cloze, generation, got {cfg.eval.tasks!r}")
    if cfg.eval.scoring not in (None, "likelihood", "generate"):
        raise PulseError(f"{where}: eval.scoring must be likelihood or generate, got {cfg.eval.scoring!r}")
    if pt.mode not in (None, "lora", "full"):
        raise PulseError(f"{where}: scenario.pretrained.mode must be lora, full or null, got {pt.mode!r}")
    if cfg.eval.mmbench_image not in ("pad", "processor"):
        raise PulseError(f"{where}: eval.mmbench_image must be pad or processor, got {cfg.eval.mmbench_image!r}")
    if cfg.unlearn.data not in ("mcq", "ft_data"):
        raise PulseError(f"{where}: unlearn.data must be mcq or ft_data, got {cfg.unlearn.data!r}")
    if cfg.unlearn.format not in ("mllmu", "model"):
        raise PulseError(f"{where}: unlearn.format must be mllmu or model, got {cfg.unlearn.format!r}")
    if cfg.unlearn.mask not in ("answer", "sequence"):
        raise PulseError(f"{where}: unlearn.mask must be answer or sequence, got {cfg.unlearn.mask!r}")
    validate_recipe(cfg.unlearn, "unlearn", where)
    validate_probes(cfg.probes, where)
    validate_curves(cfg, where)
    paths = [("data.mllmu", cfg.data.mllmu), ("data.mmbench", cfg.data.mmbench),
             ("model.pretrained", cfg.model.pretrained), ("model.finetuned", cfg.model.finetuned)]
    given = [name for name, v in paths if v is not None]
    if given and len(given) != len(paths):
        missing = [name for name, v in paths if v is None]
        raise PulseError(f"{where}: real-data runs need all of data.mllmu, data.mmbench, model.pretrained, "
                         f"model.finetuned; missing: {', '.join(missing)}")
    if ft.oracle == "build" and not cfg.uses_mini and not (Path(cfg.data.mllmu or "").parent / "world.json").is_file():
        raise PulseError(f"{where}: scenario.finetuned.oracle: build retrains on a mini world only; for a real "
                         f"model give the checkpoint fine-tuned on the retained people (pulse finetune --exclude)")
    for name, v in paths:
        hub_ok = name.startswith("model.") and _looks_like_hub_id(v or "")
        if v is not None and not Path(v).expanduser().exists() and not hub_ok:
            raise PulseError(f"{where}: {name}: path not found: {v}")


def method_references(written: list[str]) -> dict[str, str]:
    """{Method.name: the reference as written} of the methods given by reference (`module:attribute`, entry
    point) rather than by their name; results, cell folders and reports use the name (two selected methods with
    one name are refused by `check_params`)."""
    named = {ref: get_method(ref).name for ref in dict.fromkeys(written)}
    return {name: ref for ref, name in named.items() if name != ref}


def validate_probes(p: ProbesSection, where: str) -> None:
    """The probes section; one-line errors naming the key (e.g. `probes.relearn.steps`)."""
    for key, values, known in (("run", p.run, PROBES), ("scenarios", p.scenarios, SCENARIOS)):
        for v in values:
            if v not in known:
                raise PulseError(f"{where}: probes.{key}: unknown value {v!r} (known: {', '.join(known)})")
        if len(set(values)) != len(values):
            raise PulseError(f"{where}: probes.{key}: duplicate value")
    r = p.relearn
    if isinstance(r.steps, bool) or r.steps < 1:
        raise PulseError(f"{where}: probes.relearn.steps must be an integer >= 1, got {r.steps!r}")
    if r.lr is not None and not (math.isfinite(r.lr) and r.lr > 0):
        raise PulseError(f"{where}: probes.relearn.lr must be null (unlearn.lr) or a finite number > 0, got {r.lr!r}")
    if r.batch_size is not None and (isinstance(r.batch_size, bool) or r.batch_size < 1):
        raise PulseError(f"{where}: probes.relearn.batch_size must be null (unlearn.batch_size) or an integer >= 1, "
                         f"got {r.batch_size!r}")
    if r.target not in TARGETS:
        raise PulseError(f"{where}: probes.relearn.target: unknown update target {r.target!r} "
                         f"(known: {', '.join(TARGETS)})")
    if not p.quant_bits or len(set(p.quant_bits)) != len(p.quant_bits) \
            or any(isinstance(b, bool) or not 2 <= b <= 8 for b in p.quant_bits):
        raise PulseError(f"{where}: probes.quant_bits must be distinct integers in [2, 8], got {p.quant_bits!r}")
    if p.name_only not in ("substitute", "prefix"):
        raise PulseError(f"{where}: probes.name_only must be substitute or prefix, got {p.name_only!r}")


STOP_RULES = ("none", "never_learned", "oracle")


def validate_curves(cfg: RunConfig, where: str) -> None:
    """Trade-off curves and matched forgetting: eval.every / curve_mmbench_groups / half_seed, unlearn.stop, sweep."""
    e, st, u = cfg.eval, cfg.unlearn.stop, cfg.unlearn
    for key in ("every", "half_seed"):
        v = getattr(e, key)
        if isinstance(v, bool) or v < 0:
            raise PulseError(f"{where}: eval.{key} must be an integer >= 0, got {v!r}")
    if e.curve_mmbench_groups is not None and e.curve_mmbench_groups < 1:
        raise PulseError(f"{where}: eval.curve_mmbench_groups must be null (all) or >= 1, got "
                         f"{e.curve_mmbench_groups!r}")
    if st.rule not in STOP_RULES:
        raise PulseError(f"{where}: unlearn.stop.rule must be one of {', '.join(STOP_RULES)}, got {st.rule!r}")
    if not math.isfinite(st.margin):
        raise PulseError(f"{where}: unlearn.stop.margin must be a finite number, got {st.margin!r}")
    if isinstance(st.max_steps, bool) or st.max_steps < 0:
        raise PulseError(f"{where}: unlearn.stop.max_steps must be an integer >= 0, got {st.max_steps!r}")
    if st.rule == "oracle" and not cfg.scenario.finetuned.oracle:
        raise PulseError(f"{where}: unlearn.stop.rule oracle needs a retrained oracle: set scenario.finetuned.oracle")
    if st.rule != "none" and e.every < 1:
        raise PulseError(f"{where}: unlearn.stop.rule {st.rule} needs checkpoints: set eval.every >= 1")
    # Training past the budget must not change the first `budget` steps: only a constant lr allows it. With an
    # epoch budget the step count is known only at run time, so any cap needs schedule constant.
    within = u.budget == "steps" and st.max_steps <= (u.steps or 0)
    if st.rule != "none" and st.max_steps > 0 and u.schedule != "constant" and not within:
        raise PulseError(f"{where}: unlearn.stop.max_steps={st.max_steps} may exceed the budget; that needs "
                         f"unlearn.schedule constant (got {u.schedule!r})")
    if not isinstance(cfg.sweep, dict):
        raise PulseError(f"{where}: sweep: expected a mapping method -> {{parameter: [values]}}")
    if cfg.sweep and st.rule == "none":
        raise PulseError(f"{where}: sweep picks configurations that reach the matched-forgetting target: "
                         f"set unlearn.stop.rule never_learned")
    for method, grid in cfg.sweep.items():
        if method not in cfg.methods:
            raise PulseError(f"{where}: sweep.{method}: not one of the run's methods ({', '.join(cfg.methods)})")
        if not isinstance(grid, dict) or not grid:
            raise PulseError(f"{where}: sweep.{method}: expected a mapping {{parameter: [values]}}")
        for name, values in grid.items():
            if not isinstance(values, list) or not values or len(set(map(str, values))) != len(values):
                raise PulseError(f"{where}: sweep.{method}.{name}: expected a non-empty list of distinct values")
            if name == "lr":
                grid[name] = [coerce(v, float, f"{where}: sweep.{method}.lr") for v in values]
                if not all(math.isfinite(v) and v > 0 for v in grid[name]):
                    raise PulseError(f"{where}: sweep.{method}.lr: every value must be a finite number > 0")
            else:  # a parameter the method declares; values converted to its type
                grid[name] = [check_params([method], {method: {name: v}}, f"{where}: sweep")[method][name]
                              for v in values]


def validate_basics(cfg: RunConfig, where: str) -> None:
    """The run name, mini seed, pretrained.min_accuracy and eval sizes; one line naming the key."""
    name = cfg.name
    if not name or name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        raise PulseError(f"{where}: name must be a plain folder name under runs/ (no path separators, not . or ..), "
                         f"got {name!r}")
    if cfg.mini.seed < 0:
        raise PulseError(f"{where}: mini.seed must be an integer >= 0, got {cfg.mini.seed!r}")
    if not (math.isfinite(cfg.scenario.pretrained.min_accuracy) and 0 <= cfg.scenario.pretrained.min_accuracy <= 100):
        raise PulseError(f"{where}: scenario.pretrained.min_accuracy must be a percentage in [0, 100], "
                         f"got {cfg.scenario.pretrained.min_accuracy!r}")
    e = cfg.eval
    for key, low in (("batch_size", 1), ("max_new_tokens", 1), ("mmbench_max_new_tokens", 1), ("demo_people", 0)):
        if getattr(e, key) < low:
            raise PulseError(f"{where}: eval.{key} must be an integer >= {low}, got {getattr(e, key)!r}")
    if e.mmbench_groups is not None and e.mmbench_groups < 1:
        raise PulseError(f"{where}: eval.mmbench_groups must be null (all groups) or an integer >= 1, "
                         f"got {e.mmbench_groups!r}")


def load_finetune(overrides: list[str] = (), base: FinetuneSection | None = None,
                  where: str = "finetune") -> FinetuneSection:
    """A validated FinetuneSection from `key=value` overrides (keys as in the section, e.g. `lr=1e-4`)."""
    tree = {k: v for k, v in dataclasses.asdict(base).items()} if base is not None else {}
    _apply_overrides(tree, overrides)
    ft = from_dict(FinetuneSection, tree, where, "finetune.")
    validate_recipe(ft, "finetune", where)
    if ft.mode not in ("lora", "full"):
        raise PulseError(f"{where}: finetune.mode must be lora or full, got {ft.mode!r}")
    if ft.target not in TARGETS and not (ft.target == "all" and ft.mode == "full"):
        raise PulseError(f"{where}: finetune.target must be one of {', '.join(TARGETS)} (or all with mode full), "
                         f"got {ft.target!r}")
    if ft.mask not in ("answer", "sequence"):
        raise PulseError(f"{where}: finetune.mask must be answer or sequence, got {ft.mask!r}")
    if ft.sampler not in ("shuffle", "weighted"):
        raise PulseError(f"{where}: finetune.sampler must be shuffle or weighted, got {ft.sampler!r}")
    if ft.sampler == "weighted" and ft.budget != "steps":
        raise PulseError(f"{where}: finetune.sampler weighted needs budget steps")
    for key in ("people", "eval_batch_size"):
        if getattr(ft, key) < 1:
            raise PulseError(f"{where}: finetune.{key} must be >= 1, got {getattr(ft, key)!r}")
    if ft.save_every < 0:
        raise PulseError(f"{where}: finetune.save_every must be >= 0, got {ft.save_every!r}")
    if ft.seed < 0:
        raise PulseError(f"{where}: finetune.seed must be an integer >= 0, got {ft.seed!r}")
    if ft.save_dtype is not None and ft.save_dtype not in DTYPES:
        raise PulseError(f"{where}: finetune.save_dtype must be null or one of {', '.join(DTYPES)}, "
                         f"got {ft.save_dtype!r}")
    return ft


def builtin_config_path() -> Path:
    """configs/mini/default.yaml, shipped inside the package as pulse/configs (a link to the repository's configs/)."""
    path = Path(str(files("pulse") / "configs" / "mini" / "default.yaml"))
    if not path.is_file():
        raise PulseError(f"{path}: the built-in default config is missing from this installation")
    return path


def _looks_like_hub_id(v: str) -> bool:
    return v.count("/") == 1 and not v.startswith((".", "/", "~"))


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_manifest(config: dict, where: str = "manifest.json") -> RunConfig:
    """The RunConfig a run directory's manifest recorded (its "config"), rebuilt without re-validating paths."""
    return from_dict(RunConfig, config, where)
