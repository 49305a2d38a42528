"""A STAC Item (`item.json`) describing an output folder, so catalogues and viewers can index it.

Each `geolabel predict` / `geolabel mapupdate` folder gets one: its files as assets (media type
and role from the extension), the grid's CRS, shape and transform (projection extension, on
the item and on each raster asset), the WGS84 bbox, the model that made it, the inputs as
`derived_from` links, and who must be credited (imagery licensors, OpenStreetMap's ODbL).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pystac
import rasterio
from pystac.extensions.projection import ProjectionExtension
from rasterio.warp import transform_bounds

import geolabel
from geolabel.atomic import write_text_atomic
from geolabel.data.raster import open_raster

ITEM_FILE = "item.json"
OSM_PROVIDER = pystac.Provider("OpenStreetMap contributors", "Open Database License (ODbL) 1.0",
                               [pystac.ProviderRole.LICENSOR], "https://www.openstreetmap.org/copyright")
MEDIA_TYPES = {".tif": pystac.MediaType.COG, ".png": pystac.MediaType.PNG, ".gpkg": pystac.MediaType.GEOPACKAGE,
               ".geojson": pystac.MediaType.GEOJSON, ".parquet": pystac.MediaType.VND_APACHE_PARQUET,
               ".json": pystac.MediaType.JSON, ".osc": pystac.MediaType.XML, ".osm": pystac.MediaType.XML,
               ".md": "text/markdown", ".html": pystac.MediaType.HTML, ".pmtiles": pystac.MediaType.VND_PMTILES}
ROLES = {".png": ["overview"], ".json": ["metadata"], ".md": ["metadata"], ".html": ["overview"]}


def imagery_attribution(image: str | os.PathLike) -> list[str]:
    """Credit lines of a `geolabel fetch` dataset's imagery (its manifest.json), else none."""
    manifest = Path(image).parent / "manifest.json"
    try:
        lines = json.loads(manifest.read_text()).get("attribution", []) if manifest.is_file() else []
    except (OSError, ValueError, AttributeError):
        return []
    return [str(line) for line in lines if "openstreetmap" not in str(line).lower()]


def write_item(
    out_dir: str | os.PathLike,
    grid: str | os.PathLike,
    *,
    model: str | None = None,
    sources: Sequence[str | os.PathLike] = (),
    attribution: Sequence[str] = (),
    osm: bool = False,
) -> Path:
    """Write `out_dir/item.json` describing every file in `out_dir`; returns its path.

    Args:
        grid: the raster whose grid and footprint the outputs share (an output or the input); its
            `attribution` tag (the model card's credit line) is credited too.
        model: the model (run folder, model file, endpoint) that made the outputs.
        sources: the inputs, linked as `derived_from`.
        attribution: credit lines of the imagery (e.g. `imagery_attribution(image)`).
        osm: the outputs derive from OpenStreetMap data: ODbL, with its attribution.
    """
    out = Path(out_dir)
    with open_raster(grid) as src:
        proj = _projection(src)
        bbox = list(transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)) if src.crs else list(src.bounds)
        model_credit = src.tags().get("attribution")  # a model card's credit line, tagged by `geolabel predict`
    west, south, east, north = bbox
    footprint = {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]]}
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    lines = [*attribution, *([model_credit] if model_credit else [])]
    providers = [pystac.Provider(line, roles=[pystac.ProviderRole.LICENSOR]) for line in dict.fromkeys(lines)]
    providers += [OSM_PROVIDER] if osm else []
    providers.append(pystac.Provider("geolabel", f"geolabel {geolabel.__version__}", [pystac.ProviderRole.PROCESSOR]))
    properties = {"created": pystac.utils.datetime_to_str(now), "providers": [p.to_dict() for p in providers],
                  "geolabel:model": model}
    if osm:
        properties["license"] = "ODbL-1.0"
    item = pystac.Item(out.resolve().name, footprint, bbox, now, properties)
    ProjectionExtension.ext(item, add_if_missing=True).apply(**proj)
    for path in sorted(p for p in out.iterdir() if p.is_file() and p.suffix in MEDIA_TYPES and p.name != ITEM_FILE
                       and not p.name.startswith(".")):
        asset = pystac.Asset(f"./{path.name}", media_type=MEDIA_TYPES[path.suffix], roles=ROLES.get(path.suffix, ["data"]))
        item.add_asset(path.name, asset)
        if path.suffix == ".tif":
            with open_raster(path) as src:
                ProjectionExtension.ext(asset).apply(**_projection(src))
    for source in sources:
        item.add_link(pystac.Link("derived_from", os.path.abspath(source), title=Path(source).name))
    path = out / ITEM_FILE
    write_text_atomic(path, json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=1) + "\n")
    return path


def _projection(src: rasterio.DatasetReader) -> dict:
    """Projection-extension fields of an open raster: CRS (EPSG code, else WKT2), shape, transform, bbox."""
    epsg = src.crs.to_epsg() if src.crs else None
    crs = {"code": f"EPSG:{epsg}"} if epsg else {"wkt2": src.crs.to_wkt()} if src.crs else {"code": None}
    return {**crs, "shape": [src.height, src.width], "transform": list(src.transform)[:6], "bbox": list(src.bounds)}
