"""Per-command configuration: one dataclass per command, loadable from YAML, overridden by flags.

Option values are checked against the dataclass's type hints by pydantic (lax mode: "3" is a
valid int, "abc" is not), so a bad value is an error naming the file and the option before any
work starts, not a TypeError deep inside it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from geolabel.errors import InputError

C = TypeVar("C")


def load_config(cls: type[C], path: str | os.PathLike | None = None, *, values: dict[str, Any] | None = None,
                **overrides: Any) -> C:
    """Build `cls` from defaults, then the YAML file at `path`, then `values` (a mapping from
    another config, None kept: `max_tiles: null` means no limit), then non-None `overrides` (flags).

    Unknown keys are an error that names the file (or "options") and the key.
    """
    merged: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as err:
            raise InputError(path, f"cannot read config ({err.strerror})") from err
        except yaml.YAMLError as err:
            raise InputError(path, f"not valid YAML ({err})") from err
        if not isinstance(loaded, dict):
            raise InputError(path, "config must be a mapping of option names to values")
        merged.update(loaded)
    merged.update(values or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise InputError(path or "options", f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    for name, value in merged.items():
        if _plain(hints[name]):  # richer fields (scenes, nested sections) check themselves
            try:
                merged[name] = TypeAdapter(hints[name]).validate_python(value)
            except ValidationError as err:
                raise InputError(path or "options", f"{name}: {err.errors()[0]['msg'].lower()} (got {value!r})") from None
    return cls(**merged)


_PLAIN = (int, float, str, bool, type(None), Any)


def _plain(hint: Any) -> bool:
    """Whether `hint` is built from scalars, lists, tuples, dicts, optionals and literals only."""
    if hint in _PLAIN:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return True
    if origin in (list, tuple, dict, typing.Union, types.UnionType):
        return all(arg is Ellipsis or _plain(arg) for arg in typing.get_args(hint))
    return False


def dump_config(config: Any) -> str:
    """YAML text of a config dataclass (what a run folder records)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
