"""Vector outputs in the formats users open: GeoPackage, GeoJSON and GeoParquet, and PMTiles for web maps.

One writer for every vector layer geolabel produces (polygons, map-update changes), so the
`--vector-format` choice means the same thing everywhere: `NAME.gpkg` and `NAME.parquet` keep
the frame's CRS, `NAME.geojson` is EPSG:4326 (RFC 7946); `--pmtiles` adds `NAME.pmtiles`
(`geolabel.data.vectortiles`). Each file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd

from geolabel.atomic import atomic_path
from geolabel.errors import InputError

VECTOR_FORMATS = ("gpkg", "geojson", "parquet")


def write_vectors(frame: gpd.GeoDataFrame, out_dir: str | os.PathLike, name: str,
                  formats: Sequence[str] = ("gpkg", "geojson"), *, pmtiles: bool = False,
                  attribution: Sequence[str] = ()) -> dict[str, Path]:
    """Write `frame` as `out_dir/NAME.EXT` for each format, and with `pmtiles` as `NAME.pmtiles` (one
    vector-tile layer NAME, crediting `attribution`); returns {format: path}."""
    unknown = sorted(set(formats) - set(VECTOR_FORMATS))
    if unknown or not formats:
        raise InputError("--vector-format", f"expected some of {', '.join(VECTOR_FORMATS)}, got {', '.join(unknown) or 'none'}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in dict.fromkeys(formats):
        path = paths[fmt] = out / f"{name}.{fmt}"
        with atomic_path(path, suffix=f".tmp.{fmt}") as tmp:
            tmp.unlink()  # OGR drivers refuse to write over the placeholder
            if fmt == "parquet":
                # GeoParquet 1.1, WKB geometries (what every reader takes) with a bbox covering column:
                # row-group statistics that let readers skip what a spatial filter excludes
                frame.to_parquet(tmp, index=False, write_covering_bbox=True)
            elif fmt == "gpkg":
                frame.to_file(tmp, driver="GPKG", layer=name, engine="pyogrio")
            else:
                wgs84 = frame.to_crs("EPSG:4326") if frame.crs is not None else frame
                wgs84.to_file(tmp, driver="GeoJSON", engine="pyogrio")
    if pmtiles:
        from geolabel.data.vectortiles import write_pmtiles

        paths["pmtiles"] = write_pmtiles(frame, out / f"{name}.pmtiles", name, attribution=attribution)
    return paths


def read_vectors(path: str | os.PathLike) -> gpd.GeoDataFrame:
    """A GeoPackage, GeoJSON, GeoParquet or any OGR-readable vector file as a GeoDataFrame."""
    try:
        if Path(path).suffix.lower() == ".parquet":
            return gpd.read_parquet(path)
        return gpd.read_file(path, engine="pyogrio")
    except Exception as err:  # pyogrio / pyarrow raise many types for foreign files
        raise InputError(path, f"not a readable vector file ({str(err).splitlines()[0][:200]})") from err
