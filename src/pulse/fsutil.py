"""Atomic writes: write to a temporary name in the same folder, then rename over the target.

The file gets mode 0o644 minus the process umask (what `open()` would give a new file under the usual umask
022), not mkstemp's private 0o600: results, manifests and reports are meant to be read by the group.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import PulseError

FILE_MODE = 0o644


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it (os.umask would set it briefly, which
    other threads creating files at that moment would see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically. A failing write (disk full, read-only, permission) leaves the previous
    file untouched and no temporary behind, and is one PulseError naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise PulseError(f"{path}: cannot write ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise PulseError(f"{path}: cannot write ({e.strerror or e}); the file on disk, if any, is unchanged") \
                from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
