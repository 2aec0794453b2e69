"""Unlearning methods: registry entries of a forget loss, an optional retain loss and their weights.

Stable public API — `from pulse.unlearn import Method, Outputs, losses, method_loss` (the built-ins below use
nothing else, so a method defined outside the package can do everything they do):

`Method` (a frozen record; no subclassing): loss = forget_weight·forget_loss + retain_weight·retain_loss
  name              the method's name: logs and `unlearn.params.<name>` use it; may not be a built-in's name
  description       what it is and which source it follows
  forget_loss       Outputs -> scalar tensor, called on every forget batch (minimised)
  retain_loss       Outputs -> scalar tensor on a retain batch; None = no retain batch is drawn
  forget_weight, retain_weight   the weights above
  needs_ref_forget  the loop fills `Outputs.ref_logps_sum` on forget batches
  needs_ref_retain  the loop fills `Outputs.ref_logits` on retain batches (refused with unlearn.mode=full)
  forget_answers    "true": forget batches hold the true answers; "idk": a refusal drawn from IDK_ANSWERS
  defaults          the hyper-parameters and their defaults: its keys are the only names `unlearn.params` may set
                    for this method, and each default's type (bool, int, float or str) is the type accepted
`Outputs` — what a loss sees: one forward of the trained model on one batch
  logits [B, T, V]  the model being trained (LoRA adapter on), with grad
  labels [B, T]     -100 outside the loss: answer tokens only (unlearn.mask=sequence: the whole text); image
                    tokens and padding never. Hugging Face shift: logits[:, t] predicts labels[:, t + 1]
  ref_logps_sum [B] reference sequence-summed answer log-probs (`losses.sequence_logps_sum`), or None
  ref_logits [B, T, V]  reference logits on this same batch (no grad), or None
  params            this method's resolved hyper-parameters (see below), e.g. {"beta": 0.1}
`method_loss(method, forget, retain)` -> (loss, {"forget", "retain", "loss"} as floats); fills `params`. A
  non-finite loss ends the request as "diverged".
`losses` — pure tensor functions with their formulas: token_logps, sequence_logps_sum / _mean, answer_lengths,
  nll, ga, kl_ref, npo, simnpo (fp32 log-softmax; the vocabulary is never indexed with -100).

Reference = the model before this request = the same weights with the LoRA adapter disabled (no copy):
`ref_logps_sum` is computed once per request, before the first step, with the adapter disabled, and reused at every
step (indexed by the batch's samples); `ref_logits` is computed for every retain batch (adapter disabled, no grad).
With unlearn.mode=full there is no adapter: `ref_logps_sum` comes from the weights before the first update.

Method names (`get_method`, used for `methods` / `table3_methods`) resolve in this order:
1. a built-in name (METHODS);
2. `module.path:ATTRIBUTE` — the module is imported (if it is not importable from sys.path, the current directory
   is appended to sys.path and the import retried, so `pulse run "methods=[ga,examples.my_method:MY_METHOD]"`
   works from the repository root with the `pulse` script too); ATTRIBUTE (dots allowed) must be a `Method`
   instance — not a class or a factory;
3. an installed package's entry point in the group `pulse.methods` (`wga = my_pkg.mod:WGA`): the entry point's
   name is the method name and must equal the Method's `.name`.
A custom Method may not take a built-in's name (a reference to the built-in object itself is fine): give a
modified copy its own name, e.g. `dataclasses.replace(METHODS["npo"], name="npo04", defaults={"beta": 0.4})`.
Results, cell folders and report labels use the name as written in `methods` (the reference, for module:attr).

Hyper-parameters: `unlearn.params` is shared by the run's methods and checked at config load (`check_params`):
- `name: value` (flat, as before) sets `name` for every selected method that declares it; it is an error if none
  does (e.g. `betta`);
- `<method name>: {name: value}` sets it for that method only and wins over the flat form
  (`unlearn.params.npo.beta=0.4`, `unlearn.params.wga.beta=2`).
Types follow the defaults: int is accepted for a float, bool never for a number, strings that float() parses are
floats (YAML 1.1 reads `1e-3` as a string), non-finite floats are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from pulse.errors import PulseError
from pulse.unlearn import losses

IDK_ANSWERS: tuple[str, ...] = (
    "I don't know.",
    "I'm not sure.",
    "I have no information about that.",
    "I can't answer that.",
    "I don't have that information.",
    "I'm afraid I don't know.",
    "That is not something I know.",
    "I cannot say.",
)


@dataclass(frozen=True)
class Outputs:
    """One forward pass of the trained model on one batch, plus reference values and hyper-parameters."""

    logits: torch.Tensor  # [B, T, V]
    labels: torch.Tensor  # [B, T], -100 outside the loss
    ref_logps_sum: torch.Tensor | None = None  # [B], reference sequence-summed answer log-probs
    ref_logits: torch.Tensor | None = None  # [B, T, V], reference logits on the same batch
    params: dict = field(default_factory=dict)  # hyper-parameters, e.g. {"beta": 0.1}


LossFn = Callable[[Outputs], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """A registry entry. loss = forget_weight·forget_loss(forget) + retain_weight·retain_loss(retain)."""

    name: str
    description: str
    forget_loss: LossFn
    retain_loss: LossFn | None = None
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    needs_ref_forget: bool = False
    needs_ref_retain: bool = False
    forget_answers: Literal["true", "idk"] = "true"
    defaults: dict = field(default_factory=dict)


# --- loss callables on Outputs ---------------------------------------------------------------------------------


def _need(value, what: str, out: Outputs):
    if value is None:
        raise ValueError(f"this loss needs Outputs.{what}; the training loop did not provide it")
    return value


def ga_loss(out: Outputs) -> torch.Tensor:
    """−NLL (batch token mean) on the batch: gradient ascent."""
    return losses.ga(out.logits, out.labels)


def nll_loss(out: Outputs) -> torch.Tensor:
    """NLL (batch token mean) on the batch: gradient descent."""
    return losses.nll(out.logits, out.labels)


def kl_loss(out: Outputs) -> torch.Tensor:
    """KL(p_ref ‖ p_θ), masked per-token mean over the positions that predict labelled tokens."""
    return losses.kl_ref(out.logits, _need(out.ref_logits, "ref_logits", out), labels=out.labels)


def npo_loss(out: Outputs) -> torch.Tensor:
    """NPO on per-sample sequence-summed log-probs against the cached reference log-probs; needs params['beta']."""
    logps_sum = losses.sequence_logps_sum(out.logits, out.labels)
    return losses.npo(logps_sum, _need(out.ref_logps_sum, "ref_logps_sum", out), out.params["beta"])


def simnpo_loss(out: Outputs) -> torch.Tensor:
    """SimNPO; needs params['beta'] and params['margin'] (γ_m)."""
    logps_sum = losses.sequence_logps_sum(out.logits, out.labels)
    lengths = losses.answer_lengths(out.labels)
    return losses.simnpo(logps_sum, lengths, out.params["beta"], out.params["margin"])


def nll_plus_kl_mllmu_loss(out: Outputs) -> torch.Tensor:
    """MLLMU-Bench KL_Min retain term: NLL + KL(p_ref ‖ p_θ) summed over ALL positions (no mask) / batch size."""
    ref_logits = _need(out.ref_logits, "ref_logits", out)
    return losses.nll(out.logits, out.labels) + losses.kl_ref(out.logits, ref_logits, reduction="mllmu")


# --- the registry ----------------------------------------------------------------------------------------------

_ENTRIES = (
    Method(
        name="ga",
        description="Gradient ascent: −NLL on the forget set; no retain term (TOFU / MLLMU-Bench GA).",
        forget_loss=ga_loss,
    ),
    Method(
        name="ga_klr",
        description="GA + KL retain (PULSE 'GA+KLR', TOFU 'KL', MUSE ga_klr): −NLL(D_f) + KL(p_ref‖p_θ) on D_r, "
        "weight 1; reference = model before this request (adapter disabled). KL reduction: masked per-token mean "
        "over the positions that predict loss tokens. Sources differ: OpenUnlearning's batchmean on flattened "
        "(B·T, V) logits is a mean over all positions, padding included; MLLMU-Bench KL_Min sums over all "
        "positions unmasked and divides by the batch size (method kl_min).",
        forget_loss=ga_loss,
        retain_loss=kl_loss,
        needs_ref_retain=True,
    ),
    Method(
        name="grad_diff",
        description="Gradient difference: −NLL(D_f) + NLL(D_r), one forget and one retain batch per step.",
        forget_loss=ga_loss,
        retain_loss=nll_loss,
    ),
    Method(
        name="npo",
        description="NPO (arXiv 2404.05868), per-sample sequence-summed log-ratio; reference = model before this "
        "request (not MLLMU-Bench's retain-only oracle); no retain term. beta 0.1 as the NPO paper, TOFU and "
        "OpenUnlearning (MLLMU-Bench uses 0.4 with one batch-mean token-NLL difference per batch; set "
        "unlearn.params.beta=0.4 for its beta).",
        forget_loss=npo_loss,
        needs_ref_forget=True,
        defaults={"beta": 0.1},
    ),
    Method(
        name="npo_klr",
        description="NPO + KL(p_ref‖p_θ) on D_r (TOFU npo_KL), weights 1/1, beta 0.1 (TOFU, OpenUnlearning); "
        "KL as in ga_klr (masked per-token mean).",
        forget_loss=npo_loss,
        retain_loss=kl_loss,
        needs_ref_forget=True,
        needs_ref_retain=True,
        defaults={"beta": 0.1},
    ),
    Method(
        name="simnpo",
        description="SimNPO (arXiv 2410.07163): reference-free, length-normalised NPO, plus NLL on D_r. "
        "OpenUnlearning defaults: beta 4.5, margin 0, forget weight 0.125, retain weight 1.",
        forget_loss=simnpo_loss,
        retain_loss=nll_loss,
        forget_weight=0.125,
        defaults={"beta": 4.5, "margin": 0.0},
    ),
    Method(
        name="idk",
        description="IdkPO (TOFU 'PO'): NLL towards a refusal (IDK_ANSWERS) on forget questions + NLL on D_r.",
        forget_loss=nll_loss,
        retain_loss=nll_loss,
        forget_answers="idk",
    ),
    Method(
        name="kl_min",
        description="MLLMU-Bench KL_Min as implemented: forget −NLL; retain NLL + KL(p_ref‖p_θ) summed over all "
        "positions (unmasked: prompt, image tokens, padding) / batch size. Deviation: MLLMU-Bench alternates "
        "all-forget then all-retain blocks per epoch; we sum one forget and one retain batch per step.",
        forget_loss=ga_loss,
        retain_loss=nll_plus_kl_mllmu_loss,
        needs_ref_retain=True,
    ),
)

METHODS: dict[str, Method] = {m.name: m for m in _ENTRIES}


ENTRY_POINT_GROUP = "pulse.methods"


def get_method(name: str) -> Method:
    """The method called `name`: a built-in, a `module.path:ATTRIBUTE` reference or a `pulse.methods` entry point.

    One-line PulseError naming what failed otherwise (see the module docstring for the rules).
    """
    if name in METHODS:
        return METHODS[name]
    if ":" in name:
        return _checked(_from_reference(name), f"method {name!r}")
    found = [ep for ep in _entry_points() if ep.name == name]
    if not found:
        plugins = sorted({ep.name for ep in _entry_points()})
        extra = f"; entry points ({ENTRY_POINT_GROUP}): {', '.join(plugins)}" if plugins else ""
        raise PulseError(f"unknown unlearning method {name!r}; known: {', '.join(sorted(METHODS))}{extra}; "
                         f"or give a module.path:ATTRIBUTE reference to a pulse.unlearn.Method")
    if len({ep.value for ep in found}) > 1:
        raise PulseError(f"method {name!r}: several {ENTRY_POINT_GROUP} entry points have this name: "
                         f"{', '.join(sorted({ep.value for ep in found}))}")
    ep = found[0]
    what = f"method {name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP})"
    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 - whatever the plugin raises becomes one line
        raise PulseError(f"{what}: loading failed: {_first_line(e)}") from e
    method = _checked(obj, what)
    if method.name != name:
        raise PulseError(f"{what}: the entry point's name must equal the Method's name {method.name!r}")
    return method


def method_source(name: str) -> dict:
    """Where method `name` comes from, for a run's fingerprint: {"method", "builtin": True} for a built-in; else the
    module it is read from, that module's file and the file's sha256 (an edited file is another method), and for an
    entry point its distribution and version."""
    method = get_method(name)
    if name in METHODS:
        return {"method": name, "builtin": True}
    out: dict = {"method": name, "builtin": False}
    if ":" in name:
        module_name = name.partition(":")[0]
    else:
        ep = next(ep for ep in _entry_points() if ep.name == name)
        module_name = ep.module
        if ep.dist is not None:
            out["distribution"] = f"{ep.dist.name}=={ep.dist.version}"
    path = getattr(sys.modules.get(module_name), "__file__", None)
    out.update({"module": module_name, "file": path, "name": method.name})
    if path:
        with open(path, "rb") as f:
            out["sha256"] = hashlib.sha256(f.read()).hexdigest()
    return out


def _entry_points() -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _from_reference(ref: str):
    """The object a `module.path:ATTRIBUTE` reference names (the current directory is tried as a last resort)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr or ":" in attr:
        raise PulseError(f"method {ref!r}: expected a built-in name or module.path:ATTRIBUTE")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        cwd = os.getcwd()
        if cwd in {os.path.abspath(p or ".") for p in sys.path}:
            raise PulseError(f"method {ref!r}: cannot import module {module_name!r}: {_first_line(e)}") from e
        sys.path.append(cwd)  # the `pulse` script does not put the current directory on sys.path; python -m does
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(module_name)
        except ImportError as e2:
            raise PulseError(f"method {ref!r}: cannot import module {module_name!r} (searched sys.path and {cwd}): "
                             f"{_first_line(e2)}") from e2
        except Exception as e2:  # noqa: BLE001
            raise PulseError(f"method {ref!r}: importing module {module_name!r} failed: {_first_line(e2)}") from e2
    except Exception as e:  # noqa: BLE001 - a syntax or runtime error inside the user's module
        raise PulseError(f"method {ref!r}: importing module {module_name!r} failed: {_first_line(e)}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PulseError(f"method {ref!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _checked(obj, what: str) -> Method:
    """`obj` if it is a well-formed Method that does not take a built-in's name; PulseError otherwise."""
    if not isinstance(obj, Method):
        kind = f"class {obj.__name__}" if isinstance(obj, type) else type(obj).__name__
        raise PulseError(f"{what}: is a {kind}, not a pulse.unlearn.Method instance")
    if obj.name in METHODS and METHODS[obj.name] is not obj:
        raise PulseError(f"{what}: its name {obj.name!r} is a built-in method's; give it another name")
    if not callable(obj.forget_loss) or not (obj.retain_loss is None or callable(obj.retain_loss)):
        raise PulseError(f"{what}: forget_loss must be callable and retain_loss callable or None")
    if obj.forget_answers not in ("true", "idk"):
        raise PulseError(f"{what}: forget_answers must be 'true' or 'idk', got {obj.forget_answers!r}")
    for w in (obj.forget_weight, obj.retain_weight):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise PulseError(f"{what}: forget_weight and retain_weight must be finite numbers, got {w!r}")
    if not isinstance(obj.defaults, dict):
        raise PulseError(f"{what}: defaults must be a dict of hyper-parameters")
    for key, value in obj.defaults.items():
        if not isinstance(key, str) or not isinstance(value, (bool, int, float, str)):
            raise PulseError(f"{what}: defaults[{key!r}] = {value!r}: names must be strings and defaults "
                             f"bool, int, float or str (their type is the type unlearn.params accepts)")
    return obj


# --- hyper-parameters ------------------------------------------------------------------------------------------


def check_params(method_names: list[str], params: dict, where: str = "config") -> dict:
    """`unlearn.params` checked against the selected methods' declared `defaults`; returns it normalised.

    Flat `name: value` must be declared by at least one selected method (it applies to each that declares it);
    `<method name>: {name: value}` must name a selected method and one of its parameters. Values are converted to
    the default's type (`_param_value`). Raises one-line PulseErrors naming the key, the methods and the known names.
    """
    methods: dict[str, Method] = {}
    for ref in dict.fromkeys(method_names):
        m = get_method(ref)
        if m.name in methods and methods[m.name] is not m:
            raise PulseError(f"{where}: two selected methods are named {m.name!r}; give them different names")
        methods[m.name] = m
    known = "; ".join(f"{n}: {', '.join(m.defaults) or 'none'}" for n, m in methods.items())
    if not isinstance(params, dict):
        raise PulseError(f"{where}: unlearn.params: expected a mapping, got {params!r}")
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            if key not in methods:
                raise PulseError(f"{where}: unlearn.params.{key}: no selected method is named {key!r} "
                                 f"(selected: {', '.join(methods)})")
            m = methods[key]
            section = {}
            for name, v in value.items():
                if name not in m.defaults:
                    raise PulseError(f"{where}: unlearn.params.{key}.{name}: method {key!r} has no parameter "
                                     f"{name!r} (known: {', '.join(m.defaults) or 'none'})")
                section[name] = _param_value(v, m.defaults[name], f"{where}: unlearn.params.{key}.{name}")
            out[key] = section
            continue
        users = [m for m in methods.values() if key in m.defaults]
        if not users:
            raise PulseError(f"{where}: unlearn.params.{key}: unknown parameter; no selected method declares it "
                             f"(known: {known})")
        out[key] = [_param_value(value, m.defaults[key], f"{where}: unlearn.params.{key}") for m in users][0]
    return out


def _param_value(value, default, where: str):
    """`value` converted to the type of `default`; PulseError naming `where` when it does not fit."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise PulseError(f"{where}: expected true or false, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise PulseError(f"{where}: expected a string, got {value!r}")
    kind = "an integer" if isinstance(default, int) else "a number"
    if isinstance(value, str):
        try:
            value = int(value) if isinstance(default, int) else float(value)
        except ValueError:
            raise PulseError(f"{where}: expected {kind}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int if isinstance(default, int) else (int, float)):
        raise PulseError(f"{where}: expected {kind}, got {value!r}")
    if isinstance(default, int):
        return value
    if not math.isfinite(value):
        raise PulseError(f"{where}: must be a finite number, got {value!r}")
    return float(value)


def check_method_mode(method_name: str, mode: str) -> None:
    method = get_method(method_name)
    if mode not in ("lora", "full"):
        raise PulseError(f"unknown unlearning mode {mode!r}; use 'lora' or 'full'")
    if mode == "full" and method.needs_ref_retain:
        raise PulseError(f"method {method_name!r} needs reference logits every step; with mode 'full' that would "
                         f"need a second model copy — use mode 'lora'")


def method_params(method: Method, params: dict) -> dict:
    """The hyper-parameters `method` sees: its defaults, then the flat names it declares, then its own section."""
    flat = {k: v for k, v in params.items() if k in method.defaults and not isinstance(v, dict)}
    own = params.get(method.name)
    return {**method.defaults, **flat, **(own if isinstance(own, dict) else {})}


def method_loss(method: Method, forget: Outputs, retain: Outputs | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss = forget_weight·forget_loss + retain_weight·retain_loss, and parts {forget, retain, loss} as floats.

    Each Outputs.params is replaced by `method_params(method, params)`: defaults, overridden by the flat names the
    method declares, overridden by `params[method.name]` (undeclared flat names are dropped).
    """
    forget = dataclasses.replace(forget, params=method_params(method, forget.params))
    forget_term = method.forget_loss(forget)
    loss = method.forget_weight * forget_term
    parts = {"forget": forget_term.item()}
    if method.retain_loss is not None:
        if retain is None:
            raise ValueError(f"method {method.name!r} needs a retain batch")
        retain = dataclasses.replace(retain, params=method_params(method, retain.params))
        retain_term = method.retain_loss(retain)
        loss = loss + method.retain_weight * retain_term
        parts["retain"] = retain_term.item()
    parts["loss"] = loss.item()
    return loss, parts
