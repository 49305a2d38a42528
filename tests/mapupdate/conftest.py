"""Reuse the real-scene fixtures of tests/align."""

from tests.align.conftest import virac, virac_scene  # noqa: F401
