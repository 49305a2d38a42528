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
    """Build `cls` from defaults, then `values` (a preset or another config's mapping, None kept:
    `max_tiles: null` means no limit), then the YAML file at `path`, then non-None `overrides` (flags).

    A bad option is an error naming where its value came from: the flag (`--chip-size`), or the
    file and the key (`fetch.yaml: chip_size: ...`). Checks in `cls.__post_init__` name the flag
    (or the field); they are moved onto the file when the value came from it.
    """
    merged: dict[str, Any] = dict(values or {})
    from_file: set[str] = set()
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
        from_file = set(loaded)
    flags = {k: v for k, v in overrides.items() if v is not None}
    merged.update(flags)
    from_file -= set(flags)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise InputError(path or "options", f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    def origin(name: str, reason: str) -> InputError:
        if name in flags:
            return InputError(f"--{name.replace('_', '-')}", reason)
        return InputError(path if name in from_file else "options", f"{name}: {reason}")

    hints = typing.get_type_hints(cls)
    for name, value in merged.items():
        if _plain(hints[name]):  # richer fields (scenes, nested sections) check themselves
            try:
                merged[name] = TypeAdapter(hints[name]).validate_python(value)
            except ValidationError as err:
                raise origin(name, f"{err.errors()[0]['msg'].lower()} (got {value!r})") from None
    try:
        return cls(**merged)
    except InputError as err:
        name = err.source.removeprefix("--").replace("-", "_")
        if name in from_file:
            raise origin(name, err.reason) from None
        raise


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
