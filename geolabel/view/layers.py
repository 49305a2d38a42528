"""What `geolabel view` shows: the layers found in predict / mapupdate / dataset folders or files.

A folder is read by the names geolabel writes (`classes.tif`, `probabilities.tif`, `polygons.*`,
`changes.*`, a dataset's `imagery.tif`, `labels.tif`, `labels.gpkg`); the imagery a predict or
mapupdate folder was made from is found through its STAC item's `derived_from` links. Credit
lines come from the items' licensor providers and datasets' manifests.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geolabel.data.raster import open_raster
from geolabel.data.stac import ITEM_FILE
from geolabel.data.vectors import read_vectors
from geolabel.errors import InputError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
VECTOR_SUFFIXES = (".parquet", ".gpkg", ".geojson", ".json", ".shp", ".fgb")
FOLDER_RASTERS = {"imagery.tif": "imagery", "classes.tif": "classes", "labels.tif": "classes",
                  "probabilities.tif": "probability"}
DRAW_ORDER = ("imagery", "classes", "probability", "labels", "polygons", "changes")  # bottom to top
FOLDER_VECTORS = {"changes": "changes", "polygons": "polygons", "labels": "labels"}
VECTOR_PREFERENCE = (".parquet", ".gpkg", ".geojson")  # one file per layer: the first of these present


@dataclass
class Layer:
    """One map layer: a raster shown as tiles (`kind` imagery, classes, probability) or a vector
    file shown as features (`kind` polygons, changes, labels)."""

    name: str
    path: Path
    kind: str

    @property
    def is_raster(self) -> bool:
        return self.kind in ("imagery", "classes", "probability")


@dataclass
class Collection:
    """The layers to show (imagery first, vectors last) and the credit lines they need."""

    layers: list[Layer] = field(default_factory=list)
    attribution: list[str] = field(default_factory=list)

    def add(self, layer: Layer) -> None:
        if all(known.path.resolve() != layer.path.resolve() for known in self.layers):
            # kept in DRAW_ORDER whatever order layers come in: opaque imagery never hides the maps
            bisect.insort_right(self.layers, layer, key=lambda known: DRAW_ORDER.index(known.kind))


def collect_layers(paths: Sequence[str | os.PathLike]) -> Collection:
    """The layers of each path (a predict, mapupdate or dataset folder, or single files)."""
    found = Collection()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            before = len(found.layers)
            _collect_folder(path, found)
            if len(found.layers) == before:
                raise InputError(given, "no imagery, class or probability raster, polygons or changes in this folder")
        elif path.is_file():
            found.add(_file_layer(path))
        else:
            raise InputError(given, "no such file or folder")
    for layer in found.layers:
        if layer.is_raster:
            with open_raster(layer.path):  # unreadable rasters fail here, with the path named
                pass
    return found


def _collect_folder(folder: Path, found: Collection) -> None:
    item = folder / ITEM_FILE
    if item.is_file():
        _collect_item(item, found)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        found.attribution += [a for a in json.loads(manifest.read_text()).get("attribution", []) if a not in found.attribution]
    for name, kind in FOLDER_RASTERS.items():
        if (folder / name).is_file():
            found.add(Layer(f"{folder.name}/{name}", folder / name, kind))
    for stem, kind in FOLDER_VECTORS.items():
        present = [folder / f"{stem}{suffix}" for suffix in VECTOR_PREFERENCE if (folder / f"{stem}{suffix}").is_file()]
        if present:
            found.add(Layer(f"{folder.name}/{present[0].name}", present[0], kind))
    if (folder / "predict").is_dir():  # `geolabel mapupdate --endpoint` keeps its prediction here
        _collect_folder(folder / "predict", found)


def _collect_item(item: Path, found: Collection) -> None:
    """The imagery a STAC item's outputs derive from, and its licensors' credit lines."""
    try:
        data = json.loads(item.read_text())
    except ValueError as err:
        raise InputError(item, f"not a JSON STAC item ({err})") from None
    for provider in data.get("properties", {}).get("providers", []):
        if "licensor" in provider.get("roles", []):
            line = provider["name"] + (f", {provider['description']}" if provider.get("description") else "")
            if line not in found.attribution:
                found.attribution.append(line)
    for link in data.get("links", []):
        source = Path(link.get("href", ""))
        if link.get("rel") == "derived_from" and source.suffix.lower() in RASTER_SUFFIXES and source.is_file():
            found.add(Layer(f"imagery/{source.name}", source, "imagery"))


def _file_layer(path: Path) -> Layer:
    suffix, stem = path.suffix.lower(), path.stem.lower()
    if suffix in RASTER_SUFFIXES:
        kind = "classes" if stem.startswith(("classes", "labels")) else "probability" if stem.startswith("probabilities") else "imagery"
        return Layer(path.name, path, kind)
    if suffix in VECTOR_SUFFIXES:
        kind = "changes" if "status" in read_vectors(path).columns else "labels" if stem.startswith("labels") else "polygons"
        return Layer(path.name, path, kind)
    raise InputError(path, f"not a raster ({', '.join(RASTER_SUFFIXES)}) or vector ({', '.join(VECTOR_SUFFIXES)}) file")


def vector_geojson(layer: Layer) -> dict:
    """The layer's features as a GeoJSON FeatureCollection in EPSG:4326, each with its area in
    square metres (`area_m2`) for the popup."""
    frame = read_vectors(layer.path)
    if frame.crs is not None and len(frame):
        frame["area_m2"] = np.round(frame.to_crs(frame.estimate_utm_crs()).area.to_numpy(), 1)
        frame = frame.to_crs("EPSG:4326")
    return json.loads(frame.to_json(na="drop", drop_id=True))
