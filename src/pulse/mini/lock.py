"""One builder per mini world: an exclusive `flock` on `<dir>.lock` beside the folder being built.

The kernel releases the lock when its holder exits, however it exits (Ctrl-C, SIGKILL, crash), so a stale lock
cannot block a later build; the file holds the holder's pid, for the message. A successful build deletes the lock
file while still holding it: a process that was waiting then acquires the old file, finds the finished folder and
stops; one that comes later makes a new file and finds the folder too. A failed build leaves the file (harmless).
POSIX only (`fcntl`), like the rest of the build's atomic renames.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import PulseError


def lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock")


@contextlib.contextmanager
def build_lock(folder: str | Path, *, wait: bool, log=print):
    """Hold the build lock of `folder`. `wait` False: raise PulseError at once when another process holds it;
    True: wait for it (saying so once). Yields a function `done()` that removes the lock file (call it only once
    `folder` is complete)."""
    path = lock_path(Path(folder))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            if not wait:
                raise PulseError(f"{folder}: being built by another process (pid {holder}, lock {path}); wait for "
                                 f"it to finish or choose another --out") from None
            log(f"waiting for another process (pid {holder}) that is building {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        removed = []

        def done():
            if not removed:
                path.unlink(missing_ok=True)
                removed.append(True)
        yield done
    finally:
        os.close(fd)  # releases the flock
