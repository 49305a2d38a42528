"""Do the labels lie on the imagery? One check for every command that pairs the two.

Labels of another city, or coordinates in another CRS than the file declares, would
otherwise rasterise to an all-background mask: a dataset, a score or a map update
that looks fine and is worthless. Labels with no feature of the wanted classes on the
imagery are the same trap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import shapely
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds

from geolabel.errors import InputError


def _lonlat(bounds, crs) -> str:
    """`bounds` in `crs` as W,S,E,N in EPSG:4326 (raw, with the CRS, when they do not transform)."""
    try:
        box = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
    except (CRSError, ValueError):
        return f"{','.join(f'{v:.6g}' for v in bounds)} in {crs}"
    return "lon/lat " + ",".join(f"{v:.5f}" for v in box)


def check_labels_on_imagery(
    labels,
    bounds: tuple[float, float, float, float],
    crs,
    classes: Iterable[str],
    labels_source: str | os.PathLike,
    imagery_source: str | os.PathLike,
    class_column: str = "class",
) -> int:
    """Raise InputError naming both inputs unless some label feature of `classes` lies on the imagery.

    Args:
        labels: label features (a GeoDataFrame with a CRS), transformed to `crs` here.
        bounds, crs: the imagery footprint (left, bottom, right, top) and its CRS.
        classes: the labelled class names (not background) of `class_column`; without
            that column every feature counts.
        labels_source, imagery_source: the two inputs as the user gave them.

    Returns:
        The number of labelled features on the imagery.
    """
    names = list(classes)
    wanted = " or ".join(names) or "labelled"
    imagery = f"the imagery {os.fspath(imagery_source)} ({_lonlat(bounds, crs)})"
    if labels.crs is None:
        raise InputError(labels_source, "has no CRS (unknown coordinate reference system)")
    with np.errstate(invalid="ignore"):  # coordinates out of the declared CRS's range become inf
        on = labels.to_crs(crs).intersects(shapely.box(*bounds)).to_numpy()
    if not on.any():
        if len(labels):
            raise InputError(labels_source, f"does not overlap {imagery}: the labels span {_lonlat(labels.total_bounds, labels.crs)} "
                                            "(labels of another area, or coordinates in another CRS than their file declares?)")
        raise InputError(labels_source, f"has no {wanted} feature on {imagery}")
    labelled = labels[class_column].isin(names).to_numpy() if class_column in labels.columns else np.ones(len(labels), bool)
    count = int((on & labelled).sum())
    if count == 0:
        found = ", ".join(sorted(set(labels.loc[on, class_column].astype(str))))
        raise InputError(labels_source, f"has no {wanted} feature on {imagery}, only {found}")
    return count


__all__ = ["check_labels_on_imagery"]
