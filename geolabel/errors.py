"""Errors that name the offending input and say what is wrong with it."""

from __future__ import annotations

import os


class GeolabelError(Exception):
    """Base class of every error geolabel raises on purpose."""


class InputError(GeolabelError, ValueError):
    """An input (file, URL, option value) is missing, unreadable or invalid.

    Args:
        source: the input as the user gave it (a path, URL or option name).
        reason: what is wrong with it, in plain words.
    """

    def __init__(self, source: str | os.PathLike, reason: str):
        self.source = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class FetchError(GeolabelError):
    """A remote source (tile server, Overpass, HTTP raster) failed after all retries."""
