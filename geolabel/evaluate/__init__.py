"""Evaluation: Inria-protocol pixel metrics, polygon matching metrics, reports with overlays."""

from geolabel.evaluate.metrics import (
    match_polygons,
    pixel_scores,
    polis,
    polygon_scores,
)
from geolabel.evaluate.report import city_of, evaluate, markdown_report, pair_inputs

__all__ = [
    "city_of",
    "evaluate",
    "markdown_report",
    "match_polygons",
    "pair_inputs",
    "pixel_scores",
    "polis",
    "polygon_scores",
]
