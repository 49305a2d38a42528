"""One guard for every command's output path: where a command may write, checked before any work.

A command that writes into the wrong place loses data (its own input replaced, a folder of
other files filled or overwritten) or dies with a traceback after minutes of work (a file
where a folder should be, a read-only place). `output_path` refuses all of these up front
with an `InputError` naming the output, removes the hidden temporaries that a killed run
left there (`geolabel.atomic.is_temporary`), and, if the command then fails, removes the
folders it created that stayed empty.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from geolabel.atomic import is_temporary
from geolabel.errors import InputError

PathLike = str | os.PathLike


def remove_stale_temporaries(folder: PathLike, of: str | None = None) -> list[Path]:
    """Delete the temporaries in `folder` (only those beside output `of`, when given) and return them.

    One run writes an output at a time, so a temporary found before a run starts is a killed run's.
    """
    root = Path(folder)
    removed = [p for p in (root.iterdir() if root.is_dir() else ()) if is_temporary(p.name, of)]
    for path in removed:
        if path.is_dir():  # a staging folder (e.g. predict's resampled grid)
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def _local_inputs(inputs: Iterable[PathLike | None]) -> list[tuple[str, Path]]:
    """(as given, resolved) for each input that is an existing local path (URLs and names skipped)."""
    return [(os.fspath(i), Path(i).resolve()) for i in inputs
            if i is not None and "://" not in os.fspath(i) and Path(i).exists()]


def _make_folder(folder: Path, source: str) -> list[Path]:
    """Create `folder` and its missing parents; returns the ones created, outermost first."""
    missing = []
    for part in [folder, *folder.parents]:
        if part.exists():
            if not part.is_dir():
                raise InputError(source, f"cannot be created: {part} is a file, not a folder")
            break
        missing.append(part)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(source, f"cannot be created ({err.strerror or err})") from None
    return missing[::-1]


def _check_writable(folder: Path, source: str) -> None:
    """Create and drop a file in `folder`: permissions, read-only mounts and quotas all show."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".geolabel-probe-"):
            pass
    except OSError as err:
        raise InputError(source, f"is not writable ({err.strerror or err})") from None


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the empty folders in and under `created`, innermost first; anything holding a file stays."""
    for top in reversed(created):
        for root, dirs, _ in os.walk(top, topdown=False):
            for name in dirs:
                with contextlib.suppress(OSError):
                    (Path(root) / name).rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


@contextlib.contextmanager
def output_path(
    path: PathLike,
    *,
    command: str,
    folder: bool = True,
    marks: Iterable[str] = (),
    inputs: Iterable[PathLike | None] = (),
) -> Iterator[Path]:
    """Check that `command` may write to `path`, create it (or its folder), yield it as a Path.

    Args:
        path: the output as the user gave it: a folder of outputs (`folder=True`) or a file.
        command: the command's name, for the messages.
        folder: whether `path` is a folder of outputs or a single output file.
        marks: glob patterns of names only `command` writes in its folder (e.g. "manifest.json"):
            a folder with other (not hidden) files but none of these is another tool's or
            command's and is refused; with no marks any folder is accepted.
        inputs: the command's inputs (missing paths and URLs are skipped): none may be the
            output file, nor the output folder or lie inside it.

    Raises:
        InputError: `path` is a file where a folder is expected or the reverse, would replace
            an input, is a folder of other files, or cannot be created or written.

    If the body raises, the folders created here that are still empty are removed again.
    """
    source = os.fspath(path)
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise InputError(source, f"is a file; {command} writes a folder of outputs here")
    if not folder and target.is_dir():
        raise InputError(source, f"is a folder; {command} writes one file here (give its name)")
    resolved = target.resolve()
    for given, item in _local_inputs(inputs):
        if item == resolved or folder and resolved in item.parents:
            where = "is" if item == resolved else "holds"
            raise InputError(source, f"{where} the input {given}, which {command} would overwrite; give another output")
    place = target if folder else target.parent
    created = _make_folder(place, source)
    try:
        _check_writable(place, source)
        patterns = list(marks)
        if folder and patterns:
            names = [p.name for p in place.iterdir()]
            shown = sorted(n for n in names if not n.startswith("."))
            if shown and not any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns):
                listed = ", ".join(shown[:3]) + (", ..." if len(shown) > 3 else "")
                raise InputError(source, f"is a folder of other files ({listed}), not {command}'s outputs; "
                                         "give a new or empty folder")
        remove_stale_temporaries(place, None if folder else target.name)
        yield target
    except BaseException:
        _remove_if_empty(created)
        raise


__all__ = ["output_path", "remove_stale_temporaries"]
