"""Atomic file output: write to a temporary name beside the target, rename on success."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".tmp-"
"""In the hidden name of every temporary written beside an output (`.NAME.tmp-XXXXXXXX...`)."""
_LEGACY_SUFFIXES = (".part", ".stage.tif")  # temporaries of versions before TEMP_MARK (or named .tmp.EXT)


def temporary_prefix(final: str | os.PathLike) -> str:
    """The name prefix of the temporaries written beside `final` (for `tempfile.mkstemp`)."""
    return f".{Path(final).name}{TEMP_MARK}"


def is_temporary(name: str, of: str | None = None) -> bool:
    """Whether file `name` is a temporary written beside an output (beside `of` only, when given)."""
    if not name.startswith(f".{of}." if of else "."):
        return False
    return TEMP_MARK in name or ".tmp." in name or name.endswith(_LEGACY_SUFFIXES)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` on success.

    On any exception the temporary file is removed and `path` is left as it was, so a
    reader never sees a half-written file under the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=temporary_prefix(final), suffix=suffix or "".join(final.suffixes) + ".part", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should get normal permissions
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))
