"""Typed records from plain data: a dataclass tree built from a dict (YAML, a manifest, a message between
processes), every key known and every value of its declared type, or one PulseError naming the file and key."""
from __future__ import annotations

import dataclasses
import typing

from .errors import PulseError


def from_dict(cls, data, where: str, section: str = ""):
    """Dataclass from a dict, recursively; unknown keys and wrong types are errors naming the file (`where`) and
    the dotted key (`section` + key, e.g. `small.yaml: unlearn.lr: expected float, got 'abc'`)."""
    if not isinstance(data, dict):
        what = f"{where}: {section[:-1]}" if section else f"{where}: the top level"
        raise PulseError(f"{what}: expected a mapping of key: value, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            inside = f" in {section[:-1]}" if section else ""
            raise PulseError(f"{where}: unknown key {key!r}{inside} (known: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, where, f"{section}{key}.")
        else:
            kwargs[key] = coerce(value, hint, f"{where}: {section}{key}")
    return cls(**kwargs)


def coerce(value, hint, where: str):
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise PulseError(f"{where}: must not be null")
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [coerce(v, args[0], where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise PulseError(f"{where}: expected a mapping")
        return value
    target = args[0] if args else hint
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if target is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if target is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise PulseError(f"{where}: expected {target.__name__}, got {value!r}")
    return value
