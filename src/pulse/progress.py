"""Progress bars for PULSE's long phases (tqdm, on stderr), and messages that never glue onto a bar.

Every bar goes through `bar`: `mininterval=2`, inner bars `leave=False` (they clear their line when done), and
`disable` from the environment variable PULSE_PROGRESS:
    unset  tqdm's `disable=None`: bars only when stderr is a terminal (CI logs, pipes and files stay plain text);
    0      no bars at all;
    1      bars even when stderr is not a terminal.
An evaluation bar is named after the phase it belongs to: the caller wraps the phase in `with stage("request 0
finetuned seed 0"):` and the evaluations inside (eval/mcq.py, eval/mmbench.py) name their bars
"<stage>: MCQ (<n> people)" / "<stage>: MMBench (<n> rows)"; nested stages are joined by " · "
("quant probe finetuned ga llm seed 0 · 4-bit: MCQ (4 people)").

Messages: `write` prints a line via `tqdm.write` (bars cleared, the line printed, bars redrawn); `close_all`
closes every bar still open (an exception skipped their close), innermost first — inner bars clear their line,
a `leave=True` bar stays as its last state on a line of its own — so an error printed next starts a line.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys

from tqdm import tqdm

from .errors import PulseError

ENV = "PULSE_PROGRESS"
_STAGE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("pulse_stage", default=())


def disabled() -> bool | None:
    """tqdm's `disable` from PULSE_PROGRESS: "0" -> True, "1" -> False, unset or empty -> None (terminal only)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    if value in ("0", "1"):
        return value == "0"
    raise PulseError(f"{ENV}={value}: must be 0 (no progress bars), 1 (always) or unset (on a terminal only)")


def bar(iterable=None, *, desc: str, total: int | None = None, leave: bool = False, **kwargs) -> tqdm:
    """A tqdm bar on stderr with PULSE's settings (module docstring); `kwargs` go to tqdm (unit, initial, ...)."""
    return tqdm(iterable, desc=desc, total=total, leave=leave, mininterval=2, disable=disabled(), file=sys.stderr,
                dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def stage(label: str):
    """Inside the block, evaluation bars are named after `label` (after the enclosing stages' labels)."""
    token = _STAGE.set(_STAGE.get() + (label,))
    try:
        yield
    finally:
        _STAGE.reset(token)


def named(what: str) -> str:
    """A bar's description: "<stages, joined by ' · '>: <what>", or `what` alone outside any stage."""
    labels = _STAGE.get()
    return f"{' · '.join(labels)}: {what}" if labels else what


def write(msg: str) -> None:
    """Print `msg` as a line of its own on stdout, bars cleared first and redrawn after."""
    tqdm.write(msg, file=sys.stdout)


def close_all() -> None:
    """Close every open bar, innermost (highest position) first; see the module docstring."""
    for b in sorted(list(getattr(tqdm, "_instances", ())), key=lambda b: -abs(getattr(b, "pos", 0))):
        b.close()
