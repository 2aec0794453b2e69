"""What produced a file: the installed versions and the git commit, recorded in manifests and build records."""
from __future__ import annotations

import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import torch

from . import __version__


def versions() -> dict:
    """Installed versions, read from package metadata: importing peft costs seconds a launcher need not spend."""
    return {"pulse": __version__, "torch": torch.__version__, "transformers": version("transformers"),
            "peft": version("peft"), "python": platform.python_version(), "torch_threads": torch.get_num_threads()}


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
