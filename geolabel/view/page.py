"""The web map page of `geolabel view`: served (tiles and vectors fetched from the local server)
or exported (one self-contained HTML file: Leaflet, rasters and vectors inlined).

Both are the same `static/view.html` + `static/view.js` with a different configuration, so what
a report shows is what the live map shows, minus tiling (an exported raster is one image per layer).
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import numpy as np
from rasterio.warp import transform_bounds

from geolabel.atomic import write_text_atomic
from geolabel.classes import STATUS_COLORS
from geolabel.data.raster import open_raster
from geolabel.data.vectors import read_vectors
from geolabel.view.layers import Collection, Layer, vector_geojson
from geolabel.view.tiles import overlay_png, zoom_range

STATIC = Path(__file__).parent / "static"
VECTOR_STYLES = {  # kind -> (attribute coloured by, colours by value, default colour, legend title)
    "changes": ("status", STATUS_COLORS, (255, 255, 255), "Map-update status"),
    "polygons": ("class", {}, (70, 240, 240), "Predicted polygons"),
    "labels": ("class", {}, (245, 130, 48), "Labels"),
}
RAMP = [(0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)]  # magma, as the tiles
OPACITY = {"imagery": 1.0, "classes": 0.6, "probability": 0.7}


def _raster_bounds(layer: Layer) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a raster layer, in degrees."""
    with open_raster(layer.path) as src:
        return transform_bounds(src.crs, "EPSG:4326", *src.bounds) if src.crs else tuple(src.bounds)


def _bounds(collection: Collection) -> list[list[float]]:
    """[[south, west], [north, east]] around every layer, in degrees."""
    boxes = []
    for layer in collection.layers:
        if layer.is_raster:
            boxes.append(_raster_bounds(layer))
        else:
            frame = read_vectors(layer.path)
            if len(frame):
                boxes.append(frame.to_crs("EPSG:4326").total_bounds if frame.crs else frame.total_bounds)
    w, s, e, n = np.array(boxes).T if boxes else ([-180.0], [-85.0], [180.0], [85.0])
    return [[float(min(s)), float(min(w))], [float(max(n)), float(max(e))]]


def _colormap(src) -> dict:
    """The raster's palette of band 1 ({} without one)."""
    try:
        return src.colormap(1)
    except ValueError:
        return {}


def _legend(collection: Collection) -> list[dict]:
    groups = []
    for layer in collection.layers:
        if layer.kind == "classes":
            with open_raster(layer.path) as src:
                names = json.loads(src.tags().get("classes", "null") or "null") or ["background", "building"]
                palette = _colormap(src)
            entries = [{"label": name, "color": list(palette.get(i, (230, 25, 75, 255))[:3])}
                       for i, name in enumerate(names) if i > 0]
            groups.append({"title": f"Classes ({layer.name})", "entries": entries})
        elif layer.kind == "probability":
            groups.append({"title": "Building probability", "entries": [{"label": "0 → 1", "gradient": [list(c) for c in RAMP]}]})
        elif not layer.is_raster:
            _, colors, default, title = VECTOR_STYLES[layer.kind]
            entries = [{"label": k, "color": list(v)} for k, v in colors.items()] or [{"label": layer.name, "color": list(default)}]
            groups.append({"title": title, "entries": entries})
    unique = {json.dumps(g, sort_keys=True): g for g in groups}
    return list(unique.values())


def _layer_spec(index: int, layer: Layer, inline: bool) -> dict:
    spec = {"name": layer.name, "kind": layer.kind, "visible": True}
    if layer.is_raster:
        spec.update(type="raster", opacity=OPACITY[layer.kind], visible=layer.kind != "probability")
        if inline:
            png, (w, s, e, n) = overlay_png(layer)
            spec.update(image="data:image/png;base64," + base64.b64encode(png).decode(), bounds=[[s, w], [n, e]])
        else:
            minzoom, maxzoom = zoom_range(layer)
            w, s, e, n = _raster_bounds(layer)
            spec.update(tiles=f"/tiles/{index}/{{z}}/{{x}}/{{y}}.png", minzoom=minzoom, maxzoom=maxzoom,
                        bounds=[[s, w], [n, e]])
    else:
        color_by, colors, default, _ = VECTOR_STYLES[layer.kind]
        spec.update(type="vector", color_by=color_by, colors={k: list(v) for k, v in colors.items()}, default_color=list(default))
        if inline:
            spec["data"] = vector_geojson(layer)
        else:
            spec["url"] = f"/vectors/{index}.geojson"
    return spec


def _inline_image(match: re.Match) -> str:
    """A stylesheet's `url(images/X.png)` as a data URL (left as it is for images not vendored:
    the marker icons, which the viewer never draws)."""
    path = STATIC / "leaflet" / match.group(1)
    return f"url(data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})" if path.is_file() else match.group(0)


def page_html(collection: Collection, inline: bool = False) -> str:
    """The page: served (`inline=False`: assets, tiles and vectors by URL) or self-contained."""
    config = {"layers": [_layer_spec(i, layer, inline) for i, layer in enumerate(collection.layers)],
              "bounds": _bounds(collection), "legend": _legend(collection), "attribution": collection.attribution}
    template = (STATIC / "view.html").read_text(encoding="utf-8")
    if inline:
        css = re.sub(r"url\((images/[\w.-]+\.png)\)", _inline_image, (STATIC / "leaflet" / "leaflet.css").read_text(encoding="utf-8"))
        head = (f"<style>{css}</style>\n<style>{(STATIC / 'view.css').read_text(encoding='utf-8')}</style>\n"
                f"<script>{(STATIC / 'leaflet' / 'leaflet.js').read_text(encoding='utf-8')}</script>")
        script = f"<script>{(STATIC / 'view.js').read_text(encoding='utf-8')}</script>"
    else:
        head = ('<link rel="stylesheet" href="/static/leaflet/leaflet.css">\n<link rel="stylesheet" href="/static/view.css">\n'
                '<script src="/static/leaflet/leaflet.js"></script>')
        script = '<script src="/static/view.js"></script>'
    parts = {"head": head, "script": script,  # no "</script>" inside the JSON:
             "config": json.dumps(config, separators=(",", ":")).replace("</", "<\\/")}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], template)  # one pass: inserted text is not rescanned


def export_html(collection: Collection, path: str | os.PathLike) -> Path:
    """Write the self-contained page to `path` (opens offline, from any folder)."""
    write_text_atomic(path, page_html(collection, inline=True))
    return Path(path)
