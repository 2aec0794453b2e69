"""Load any LLaVA-family checkpoint directory (llava-hf/llava-1.5-7b-hf, -13b-hf, the mini model) through
transformers' Auto classes. safetensors only; `trust_remote_code` only when the caller asks for it.

A checkpoint directory may carry `pulse_model.json` with the prompt template and default MCQ scoring
(`{"template": "plain", "scoring": "likelihood"}`); without it, LLaVA-1.5 defaults apply (vicuna template,
faithful `generate` scoring).
"""
from __future__ import annotations

import json
import sys
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
    """Up-front checks of a checkpoint directory, reading no weights: config.json, the PULSE sidecar, and every
    safetensors file's header (`check_safetensors`); the shard index, when there is one, must name existing files."""
    if not path.is_dir():
        raise PulseError(f"{path}: model directory not found")
    if not (path / "config.json").is_file():
        raise PulseError(f"{path}: no config.json (not a transformers checkpoint directory)")
    index = path / "model.safetensors.index.json"
    if not any(path.glob("*.safetensors")) and not index.is_file():
        found = ", ".join(sorted(p.name for p in path.glob("*.bin"))) or "no weight files"
        raise PulseError(f"{path}: no safetensors weights ({found}); PULSE loads safetensors only, never pickle")
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PulseError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    read_sidecar(path)
    files = sorted(path.glob("*.safetensors"))
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise PulseError(f"{index}: not a safetensors index (JSON with a weight_map): {e}") from None
        missing = [f for f in shards if not (path / f).is_file()]
        if missing:
            raise PulseError(f"{index}: names {missing[0]}, which is not in {path} ({len(missing)} missing)")
        files = [path / f for f in shards]
    for f in files:
        check_safetensors(f)


def check_safetensors(file: Path) -> None:
    """The safetensors layout (8-byte little-endian header length N, N bytes of JSON, then the data buffer): a
    truncated or garbage file is one PulseError naming it, before transformers reads it."""
    size = file.stat().st_size
    hint = "truncated or not a safetensors file; copy or download it again"
    with open(file, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise PulseError(f"{file}: {hint} (header length {n}, file size {size} bytes)")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
            raise PulseError(f"{file}: {hint} (its header is not safetensors JSON)") from None
    buffer = size - 8 - n
    if max(ends, default=0) != buffer:
        raise PulseError(f"{file}: {hint} (its tensors need {max(ends, default=0)} bytes of data, "
                         f"the file holds {buffer})")


def read_sidecar(path) -> dict:
    """`pulse_model.json` of a checkpoint directory ({} when absent), checked: a JSON object whose `template` is a
    known name or a template mapping and whose `scoring` is likelihood or generate."""
    file = Path(path) / SIDECAR
    if not file.is_file():
        return {}
    try:
        sidecar = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PulseError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(sidecar, dict):
        raise PulseError(f"{file}: expected a JSON object, got {type(sidecar).__name__}")
    if sidecar.get("scoring", "generate") not in ("likelihood", "generate"):
        raise PulseError(f"{file}, field scoring: must be likelihood or generate, got {sidecar['scoring']!r}")
    if "template" in sidecar:
        try:
            resolve_template(sidecar["template"])
        except PulseError as e:
            raise PulseError(f"{file}, field template: {e}") from None
    return sidecar


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
            raise PulseError(f"device {device!r}: CUDA is not available on this machine (use auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PulseError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise PulseError(f"device {device!r}: MPS is not available on this machine (use auto or cpu)")
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
    return read_sidecar(path).get("scoring", "generate")


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

    from transformers.utils import logging as hf_logging

    path = Path(path)
    check_checkpoint(path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    sidecar = read_sidecar(path)
    tmpl = resolve_template(template or sidecar.get("template", "llava-1.5"))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its multi-line load report; mismatches and missing weights are said below
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise PulseError(f"{path}: cannot load checkpoint: {' '.join(str(e).split())[:300]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, ckpt, want = mismatched[0]
        raise PulseError(f"{path}: weight {key} is {list(ckpt)} in the safetensors but config.json makes it "
                         f"{list(want)} ({len(mismatched)} mismatched weights): weights and config.json do not "
                         f"belong together")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        print(f"warning: {path}: {len(missing)} weights missing from the checkpoint were initialised at random "
              f"(e.g. {missing[0]})", file=sys.stderr)
    model.to(device).eval()
    return LoadedModel(model=model, processor=processor, template=tmpl,
                       scoring=sidecar.get("scoring", "generate"), path=path)


def save_model(loaded: LoadedModel, out: Path, *, extra: dict | None = None) -> None:
    """Save model, processor and the PULSE sidecar (safetensors). The caller handles atomicity of `out`."""
    out = Path(out)
    loaded.model.save_pretrained(out, safe_serialization=True)
    loaded.processor.save_pretrained(out)
    sidecar = {"template": loaded.template.to_dict(), "scoring": loaded.scoring, **(extra or {})}
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2))
