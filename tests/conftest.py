"""Test-wide guards: no network, no hub, fixed thread count (see tiny_llava.md, gotchas)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(2)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL_CONFIG = ROOT / "configs" / "mini" / "small.yaml"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A session-wide PULSE_CACHE, so the small mini world is built once for all tests."""
    path = tmp_path_factory.mktemp("pulse-cache")
    os.environ["PULSE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def small_world(cache_dir) -> Path:
    """The small mini world, built for real (data on disk, tiny LLaVA pre-trained and fine-tuned)."""
    from pulse.config import MiniConfig
    from pulse.mini.cache import ensure_mini

    return ensure_mini(MiniConfig(size="small"), log=lambda *_: None)


@pytest.fixture(scope="session")
def small_run(small_world, tmp_path_factory) -> Path:
    """A complete `pulse run` of configs/mini/small.yaml (all scenarios, methods, Table 3 targets)."""
    from pulse.cli import main

    out = tmp_path_factory.mktemp("runs") / "small"
    assert main(["run", str(SMALL_CONFIG), "--out", str(out), "--no-report"]) == 0
    return out


@pytest.fixture(scope="session")
def llava15_shaped(tmp_path_factory) -> Path:
    """A random-weight checkpoint in llava-hf/llava-1.5-7b-hf's exact config and file layout (full widths, 1 text +
    2 vision layers, float16 on disk, about 1 GiB), written once per session (about 25 s on 2 cores)."""
    from pulse.models.llava_shaped import write_checkpoint

    out = tmp_path_factory.mktemp("llava15") / "llava-1.5-7b-shaped"
    write_checkpoint(out, log=lambda *_: None)
    return out
