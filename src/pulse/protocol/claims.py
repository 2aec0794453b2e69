"""Claims: which process works on a cell (or computes a shared file) right now, across processes and hosts.

A claim is the lock file `<name>.lock` beside what it guards, held with an exclusive `fcntl.flock` for as long as
the owner works; it records the owner's host, PID and start time for people reading the run directory. The kernel
(or the NFS lock manager) drops the lock when the owner dies — SIGKILL, OOM, a preempted node — so a stale claim
is simply one whose lock can be taken, and the next worker takes it over without any timeout. The owner deletes
the file before it lets go; a taker that locked a file already unlinked (its inode no longer at the path) retries.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import PulseError


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _open_locked(path: Path, wait: bool) -> int | None:
    """A descriptor of `path` holding its exclusive lock, or None (not `wait`, another process holds it)."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PulseError(f"{path}: cannot create the claim file ({e.strerror or e})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous owner finished and removed it while we waited: claim the path anew


@contextmanager
def claim(path: str | Path, wait: bool = True):
    """Hold the claim `path` (a `.lock` file) inside the block; yields True, or False at once when `wait` is
    False and a live process holds it. A claim left by a dead process is taken over."""
    path = Path(path)
    fd = _open_locked(path, wait)
    if fd is None:
        yield False
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner()) + "\n").encode(), 0)
        yield True
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def holder(path: str | Path) -> dict | None:
    """Who holds the claim `path` now ({host, pid, started}), or None when nobody alive does."""
    path = Path(path)
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
