"""Logging and progress bars for long work."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

logger = logging.getLogger("geolabel")


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logger.setLevel(level)


def progress_bar(desc: str, total: int | None = None, unit: str = "it", iterable: Iterable[T] | None = None) -> tqdm:
    """A progress bar to `update` by hand or iterate (silenced by GEOLABEL_NO_PROGRESS=1)."""
    disable = os.environ.get("GEOLABEL_NO_PROGRESS") == "1"
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True, leave=False)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap `iterable` in a progress bar (silenced by GEOLABEL_NO_PROGRESS=1)."""
    return iter(progress_bar(desc, total, unit, iterable))
