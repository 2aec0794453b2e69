"""Load any LLaVA-family checkpoint directory (llava-hf/llava-1.5-7b-hf, -13b-hf, the mini model) through
transformers' Auto classes. safetensors only; `trust_remote_code` only when the caller asks for it.

A checkpoint directory may carry `pulse_model.json` with the prompt template and default MCQ scoring
(`{"template": "plain", "scoring": "likelihood"}`); without it, LLaVA-1.5 defaults apply (vicuna template,
faithful `generate` scoring).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PulseError
from .templates import TEMPLATES, Template

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIDECAR = "pulse_model.json"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    template: Template
    scoring: str  # default MCQ scoring for this model: "likelihood" or "generate"
    path: Path

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_template(spec) -> Template:
    if isinstance(spec, Template):
        return spec
    if isinstance(spec, str):
        if spec not in TEMPLATES:
            raise PulseError(f"unknown prompt template {spec!r}; known: {', '.join(TEMPLATES)}")
        return TEMPLATES[spec]
    if isinstance(spec, dict):
        try:
            return Template(**spec)
        except TypeError as e:
            raise PulseError(f"bad prompt template {spec!r}: {e}") from None
    raise PulseError(f"bad prompt template {spec!r}")


def check_checkpoint(path: Path) -> None:
    if not path.is_dir():
        raise PulseError(f"{path}: model directory not found")
    if not (path / "config.json").is_file():
        raise PulseError(f"{path}: no config.json (not a transformers checkpoint directory)")
    if not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").is_file():
        found = ", ".join(sorted(p.name for p in path.glob("*.bin"))) or "no weight files"
        raise PulseError(f"{path}: no safetensors weights ({found}); PULSE loads safetensors only, never pickle")


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available, else cpu. Otherwise a torch device string (cpu, cuda, cuda:N, mps) that must
    exist on this machine; anything else is a one-line PulseError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PulseError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PulseError(f"device {device!r}: CUDA is not available on this machine (use --device auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PulseError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise PulseError(f"device {device!r}: MPS is not available on this machine (use --device auto or cpu)")
    elif dev.type != "cpu":
        raise PulseError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on CUDA (float16 on a GPU without bf16 support), float32 elsewhere; or a DTYPES name."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise PulseError(f"unknown dtype {dtype!r}; known: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def default_scoring(path) -> str:
    """The checkpoint's default MCQ/MMBench scoring: its sidecar's, else "generate" (LLaVA-1.5's protocols)."""
    sidecar = Path(path) / SIDECAR
    try:
        return json.loads(sidecar.read_text()).get("scoring", "generate") if sidecar.is_file() else "generate"
    except (OSError, ValueError, AttributeError):
        return "generate"


def check_device_dtype(device: str, dtype: str) -> None:
    """Spelling-only check (no hardware probe), for configs validated on another machine than the run's."""
    if dtype != "auto" and dtype not in DTYPES:
        raise PulseError(f"unknown dtype {dtype!r}; known: auto, {', '.join(DTYPES)}")
    if device == "auto":
        return
    try:
        ok = torch.device(device).type in ("cpu", "cuda", "mps")
    except (RuntimeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise PulseError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def load_model(path, *, dtype: str = "float32", device: str = "cpu", template=None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load model + processor from a local checkpoint directory (or a hub ID when the user has network access).

    `device` and `dtype` accept "auto" (`resolve_device`, `resolve_dtype`): cuda + bfloat16 when a GPU is there,
    cpu + float32 otherwise.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(path)
    check_checkpoint(path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    sidecar = json.loads((path / SIDECAR).read_text()) if (path / SIDECAR).is_file() else {}
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise PulseError(f"{path}: cannot load checkpoint: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return LoadedModel(model=model, processor=processor,
                       template=resolve_template(template or sidecar.get("template", "llava-1.5")),
                       scoring=sidecar.get("scoring", "generate"), path=path)


def save_model(loaded: LoadedModel, out: Path, *, extra: dict | None = None) -> None:
    """Save model, processor and the PULSE sidecar (safetensors). The caller handles atomicity of `out`."""
    out = Path(out)
    loaded.model.save_pretrained(out, safe_serialization=True)
    loaded.processor.save_pretrained(out)
    sidecar = {"template": loaded.template.to_dict(), "scoring": loaded.scoring, **(extra or {})}
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2))
