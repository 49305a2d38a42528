"""Per-command configuration: one dataclass per command, loadable from YAML, overridden by flags."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, TypeVar

import yaml

from geolabel.errors import InputError

C = TypeVar("C")


def load_config(cls: type[C], path: str | os.PathLike | None = None, **overrides: Any) -> C:
    """Build `cls` from defaults, then the YAML file at `path`, then non-None `overrides`.

    Unknown keys in the file are an error that names the file and the key.
    """
    values: dict[str, Any] = {}
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
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(path or "options", f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


def dump_config(config: Any) -> str:
    """YAML text of a config dataclass (what a run folder records)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
