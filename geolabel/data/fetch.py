"""`geolabel fetch`: imagery + labels for an area -> one dataset folder, resumably.

Steps, each skipped on a re-run when its inputs are unchanged and its outputs exist
(recorded in `.fetch-state.json`; every output is written atomically, so a killed run
leaves either a finished file or none, and the result is byte-identical to an
uninterrupted run):

1. imagery  -> `imagery.tif` (tiles are cached under `cache/tiles/`, so a killed
   download resumes tile by tile); a tile job is sized first (count and bytes) and
   one of more than `MAX_TILES` tiles is refused unless `max_tiles` allows it (`--yes`);
2. labels   -> `labels.gpkg` (vectors in the imagery CRS), refused when no feature of
   the classes lies on the imagery (`geolabel.data.overlap`); with an alignment model
   (`fetch --align`), fetched as `labels-source.gpkg` and aligned to the imagery into
   `labels.gpkg`;
3. rasterise -> `labels.tif` (uint8 classes on the imagery grid, 255 = no imagery);
4. chips    -> `chips/{train,val}-*.tfrecord.gz`, split by spatial blocks;
5. `manifest.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from geolabel.atomic import atomic_path, write_text_atomic
from geolabel.classes import IGNORE, ClassMap
from geolabel.config import load_config
from geolabel.data import chips as chipfmt
from geolabel.data.aoi import AOI, resolve_aoi
from geolabel.data.http import HttpClient
from geolabel.data.imagery import clip_raster, to_uint8, uint8_scaling
from geolabel.data.overlap import check_labels_on_imagery
from geolabel.data.osm import (
    OSM_ATTRIBUTION,
    LabelRules,
    classes_from_names,
    fetch_overpass,
    is_osm_extract,
    read_osm_extract,
    read_vector_labels,
)
from geolabel.data.raster import open_raster
from geolabel.data.rasterize import rasterize_labels
from geolabel.data.tiles import TileCache, TileTemplate, download_bytes, fetch_tiles, mosaic_tiles, tile_range
from geolabel.errors import InputError
from geolabel.outputs import remove_stale_temporaries
from geolabel.progress import logger, progress

STATE = ".fetch-state.json"
FORMAT_VERSION = 1
FIXED_GPKG_DATE = "2000-01-01T00:00:00.000Z"  # GeoPackage change dates pinned: same inputs, same bytes
MAX_TILES = 100_000  # a bigger tile job (~2.4 GB; at z21 ~36 km² at the equator) needs max_tiles=None (`fetch --yes`)


@dataclass
class FetchOptions:
    """How to fetch, beyond the AOI and the two sources.

    Args:
        zoom: tile zoom level (tile/WMS sources).
        tile_size: tile side in pixels.
        subdomains: values of `{s}` in a tile template: a list, or one string of letters ("abc")
            or of comma-separated values ("a1,a2").
        overpass_url: Overpass endpoint for labels="osm".
        class_column: class column of a vector label file (names or ids).
        default_class: class of every feature of a vector file without a class column.
        chip_size: training chip side in pixels.
        split_block: side of a train/val split block, in chips.
        val_fraction: share of split blocks that go to validation.
        min_valid: least share of a chip with imagery for it to be kept.
        chips_per_shard: chips per TFRecord shard.
        connections: concurrent HTTP requests.
        retries, backoff, timeout: HTTP retry policy (see geolabel.data.http.HttpClient).
        cache_dir: tile cache root (default: DATASET/cache/tiles).
        block: pixels per side of a processing block (bounds memory for huge AOIs).
        attribution: imagery attribution line for the manifest.
        name: dataset name written into the chips (default: the folder name).
        road_widths: carriageway metres by highway type (see geolabel.data.osm.LabelRules).
        max_tiles: most tiles of a tile/WMS job fetched without asking (None: no limit, `fetch --yes`);
            a bbox typed with the wrong zoom easily means millions of tiles.
    """

    zoom: int | None = None
    tile_size: int = 256
    subdomains: tuple[str, ...] | str = ("a", "b", "c")
    overpass_url: str | None = None
    class_column: str | None = None
    default_class: str | None = None
    chip_size: int = 256
    split_block: int = 4
    val_fraction: float = 0.2
    min_valid: float = 0.25
    chips_per_shard: int = 256
    connections: int = 8
    retries: int = 6
    backoff: float = 0.25
    timeout: float = 20.0
    cache_dir: str | None = None
    block: int = 2048
    attribution: str | None = None
    name: str | None = None
    road_widths: dict[str, float] | None = None
    max_tiles: int | None = MAX_TILES

    def __post_init__(self) -> None:
        """Checked when made, so a bad option fails before any download."""
        if isinstance(self.subdomains, str):
            self.subdomains = tuple(self.subdomains.split(",") if "," in self.subdomains else self.subdomains)
        self.subdomains = tuple(s for s in self.subdomains if s)
        if self.chip_size <= 0 or self.chip_size % 16:
            raise InputError("--chip-size", f"{self.chip_size} is not a positive multiple of 16")
        if not 0 <= self.val_fraction < 1:
            raise InputError("--val-fraction", f"{self.val_fraction} is not in [0, 1)")
        if self.split_block < 1:
            raise InputError("--split-block", "must be >= 1")
        if self.connections < 1:
            raise InputError("--connections", "must be >= 1")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise InputError("max_tiles", "must be >= 1 (or None for no limit)")
        if self.block < 256 or self.block % 256:
            raise InputError("block", "must be a multiple of 256")


@dataclass(frozen=True)
class LabelAlignment:
    """Move the fetched label vectors onto the imagery before rasterising (`fetch --align MODEL`).

    The data layer does not know alignment models: the caller supplies `run(imagery,
    labels_in, labels_out) -> summary` (e.g. `geolabel.align.align_file` with a model) and a
    `key` naming the model's content, so a re-run with the same model skips the step.
    """

    key: str
    run: Callable[[Path, Path, Path], dict]


def _key(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class _State:
    """Which steps are finished, with their input key and results."""

    def __init__(self, folder: Path):
        self.path = folder / STATE
        self.steps = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def done(self, step: str, key: str, *outputs: Path) -> dict | None:
        entry = self.steps.get(step)
        if entry and entry.get("key") == key and all(p.exists() for p in outputs):
            return entry["result"]
        return None

    def finish(self, step: str, key: str, result: dict) -> dict:
        self.steps[step] = {"key": key, "result": result}
        write_text_atomic(self.path, json.dumps(self.steps, indent=1, sort_keys=True, default=str) + "\n")
        return result


def is_tile_template(imagery: str) -> bool:
    """Whether `imagery` is a tile/WMS URL template rather than a raster path or URL."""
    return "{" in imagery and "}" in imagery


@contextlib.contextmanager
def _pinned_gpkg_dates() -> Iterator[None]:
    import pyogrio

    old = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": FIXED_GPKG_DATE})
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": old})


# ---------------------------------------------------------------- steps


def fetch_imagery(imagery: str, aoi: AOI, out: Path, options: FetchOptions, client: HttpClient) -> dict:
    """Write `out` (COG) from a tile template or a GeoTIFF/COG; info for the manifest."""
    if is_tile_template(imagery):
        if options.zoom is None:
            raise InputError("--zoom", "is required for a tile or WMS source")
        template = TileTemplate(imagery, tuple(options.subdomains), options.tile_size)
        trange = tile_range(aoi.bbox, options.zoom)
        size = f"{len(trange):,} tiles at zoom {trange.z} (about {_bytes(download_bytes(trange, options.tile_size))} to download)"
        if options.max_tiles is not None and len(trange) > options.max_tiles:
            raise InputError(aoi.source, f"{size} is more than the {options.max_tiles:,} fetched without asking; "
                                         "use a smaller area or zoom, or pass --yes (max_tiles=None) to fetch it all")
        logger.log(logging.WARNING if len(trange) > MAX_TILES else logging.INFO, "fetching %s from %s", size, imagery)
        root = Path(options.cache_dir) if options.cache_dir else out.parent / "cache" / "tiles"
        cache = TileCache(root / template.key)
        fetch_tiles(template, trange.tiles(), cache, client, total=len(trange))
        mosaic = mosaic_tiles(
            cache, trange, out, options.tile_size, block_tiles=max(1, options.block // options.tile_size),
            tags={"source": imagery, "zoom": str(trange.z)}, source=imagery,
        )
        if mosaic["tiles"] == 0:
            out.unlink(missing_ok=True)
            raise InputError(imagery, f"the server has none of the {len(trange)} tiles of the area at zoom {trange.z}")
        return {
            "kind": "wms" if template.is_wms else "tiles", "url": imagery, "zoom": trange.z, "tile_px": options.tile_size,
            "tile_range": {"z": trange.z, "x": [trange.x0, trange.x1], "y": [trange.y0, trange.y1]},
            "tiles": {"total": len(trange), "present": mosaic["tiles"], "missing": mosaic["missing"]},
            "crs": "EPSG:3857",
        }
    info = clip_raster(imagery, aoi, out, block=options.block)
    return {"kind": "raster", "url": imagery, **info}


def fetch_labels(
    labels: str, aoi: AOI, classes: ClassMap, imagery_path: Path, out: Path, options: FetchOptions, client: HttpClient,
    imagery: str | None = None,
) -> dict:
    """Write `out` (GeoPackage, imagery CRS) with the label vectors of the imagery's area.

    Raises InputError (naming the labels and `imagery`, the source as given, default
    `imagery_path`) when no feature of the classes lies on the imagery.
    """
    import geopandas as gpd
    import shapely
    from rasterio.warp import transform_bounds

    rules = LabelRules(road_widths=options.road_widths) if options.road_widths else LabelRules()
    with open_raster(imagery_path) as src:
        crs, bounds = src.crs, tuple(src.bounds)
        area = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    bbox = (max(area[0], aoi.bbox[0]), max(area[1], aoi.bbox[1]), min(area[2], aoi.bbox[2]), min(area[3], aoi.bbox[3]))
    if labels == "osm":
        frame, info = fetch_overpass(bbox, classes, options.overpass_url, client, rules)
        info = {"kind": "overpass", "url": info["overpass_url"], "osm_timestamp": info["osm_timestamp"], "query": info["query"]}
    elif is_osm_extract(labels):
        frame, info = read_osm_extract(labels, classes, bbox, rules)
        info = {"kind": "osm-extract", "url": os.fspath(labels), "osm_timestamp": info["osm_timestamp"], "sha256": info["sha256"]}
    else:
        frame, info = read_vector_labels(labels, classes, options.class_column, options.default_class, bbox, rules=rules)
        if frame.empty:  # none here: read them all, so that the error can say where they are
            frame, _ = read_vector_labels(labels, classes, options.class_column, options.default_class, rules=rules)
        info = {"kind": "vector-file", "url": os.fspath(labels), "osm_timestamp": None, "class_column": options.class_column}
    check_labels_on_imagery(frame, bounds, crs, classes.names[1:], labels, imagery or imagery_path)
    frame = frame[frame.intersects(shapely.box(*bbox))]
    frame = frame.sort_values(["class_id", "osm_id", "tag"], kind="stable", na_position="last").reset_index(drop=True)
    frame = gpd.GeoDataFrame(frame, geometry="geometry", crs="EPSG:4326").to_crs(crs)
    with _pinned_gpkg_dates(), atomic_path(out, suffix=".tmp.gpkg") as tmp:
        tmp.unlink()
        frame.to_file(tmp, driver="GPKG", layer="labels", engine="pyogrio")
    info["features"] = {name: int((frame["class"] == name).sum()) for name in classes.names[1:]}
    return info


def _split_blocks(keys: list[tuple[int, int]], val_fraction: float) -> set[tuple[int, int]]:
    """Validation blocks, spread evenly over the blocks in row-major order."""
    keys = sorted(keys)
    val = {k for i, k in enumerate(keys) if math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction)}
    if not val and val_fraction > 0 and len(keys) >= 2:
        val = {keys[len(keys) // 2]}
    return val


def chip_windows(imagery_path: Path, labels_path: Path, options: FetchOptions) -> tuple[list[tuple[Window, str]], dict]:
    """The chips to keep (enough imagery), each with its split."""
    size = options.chip_size
    keep: list[tuple[Window, tuple[int, int]]] = []
    with open_raster(labels_path) as lab:
        rows, cols = math.ceil(lab.height / size), math.ceil(lab.width / size)
        for r in range(rows):
            for c in range(cols):
                window = Window(c * size, r * size, min(size, lab.width - c * size), min(size, lab.height - r * size))
                mask = lab.read(1, window=window)
                if (mask != IGNORE).sum() >= options.min_valid * size * size:
                    keep.append((window, (r // options.split_block, c // options.split_block)))
    val_blocks = _split_blocks(sorted({b for _, b in keep}), options.val_fraction)
    chosen = [(w, "val" if b in val_blocks else "train") for w, b in keep]
    return chosen, {"blocks": len({b for _, b in keep}), "val_blocks": len(val_blocks)}


def _chips(imagery_path: Path, labels_path: Path, windows: list[Window], size: int, scaling, source: str) -> Iterator[chipfmt.Chip]:
    with open_raster(imagery_path) as img, open_raster(labels_path) as lab:
        crs = img.crs.to_string() if img.crs.to_epsg() else img.crs.to_wkt()
        bands = list(range(1, min(img.count, 3) + 1)) if img.count != 4 else [1, 2, 3, 4]
        for window in windows:
            full = Window(window.col_off, window.row_off, size, size)
            image = to_uint8(img.read(bands, window=full, boundless=True, fill_value=img.nodata or 0), scaling)
            mask = lab.read(1, window=full, boundless=True, fill_value=IGNORE)
            left, top = img.transform * (full.col_off, full.row_off)
            right, bottom = img.transform * (full.col_off + size, full.row_off + size)
            yield chipfmt.Chip(
                np.ascontiguousarray(image.transpose(1, 2, 0)), mask.astype(np.uint8),
                (min(left, right), min(bottom, top), max(left, right), max(bottom, top)), crs, source,
            )


def _write_split(chips: Iterator[chipfmt.Chip], count: int, folder: Path, prefix: str, per_shard: int) -> None:
    """Stream chips into `prefix-0000i-of-NNNNN.tfrecord.gz` shards (the geolabel.data.chips format),
    one shard in memory at a time, each shard written atomically."""
    import tensorflow as tf

    shards = max(1, math.ceil(count / per_shard))
    folder.mkdir(parents=True, exist_ok=True)
    chips = iter(chips)
    for i in range(shards):
        path = folder / f"{prefix}-{i:05d}-of-{shards:05d}.tfrecord.gz"
        with atomic_path(path) as tmp:
            with tf.io.TFRecordWriter(str(tmp), options=chipfmt.COMPRESSION) as writer:
                for _, chip in zip(range(per_shard), chips):
                    writer.write(chipfmt.encode_chip(chip))


def write_chips(imagery_path: Path, labels_path: Path, folder: Path, options: FetchOptions, source: str) -> dict:
    """Cut chips of both splits into sharded TFRecords under `folder`."""
    chosen, split_info = chip_windows(imagery_path, labels_path, options)
    scaling = uint8_scaling(imagery_path)
    for old in list(chipfmt.shard_paths(folder, "train")) + list(chipfmt.shard_paths(folder, "val")):
        old.unlink()
    counts = {}
    for split in ("train", "val"):
        windows = [w for w, s in chosen if s == split]
        counts[split] = len(windows)
        if windows:
            chips = progress(_chips(imagery_path, labels_path, windows, options.chip_size, scaling, source), desc=f"{split} chips", total=len(windows), unit="chip")
            _write_split(chips, len(windows), folder, split, options.chips_per_shard)
    return {
        **counts, "size": options.chip_size, "split": "spatial blocks", "split_block_chips": options.split_block,
        **split_info, "uint8_scaling": scaling,
        "shards": {s: len(chipfmt.shard_paths(folder, s)) for s in ("train", "val")},
    }


# ---------------------------------------------------------------- the whole fetch


def fetch_dataset(
    out_dir: str | os.PathLike,
    imagery: str,
    labels: str,
    *,
    bbox=None,
    aoi: str | os.PathLike | None = None,
    place: str | None = None,
    geocoder_url: str | None = None,
    classes: ClassMap | tuple[str, ...] | list[str] = ("background", "building"),
    options: FetchOptions | None = None,
    command: str | None = None,
    align: LabelAlignment | None = None,
) -> dict:
    """Fetch imagery and labels for an area into a dataset folder; return the manifest.

    Args:
        out_dir: dataset folder (created; a re-run resumes and skips finished steps).
        imagery: XYZ/TMS/WMS URL template, or a local/remote GeoTIFF/COG.
        labels: "osm" (Overpass), an OSM extract (.osm/.osm.bz2/.osm.pbf), or a vector file.
        bbox, aoi, place: the area of interest (exactly one).
        classes: class map or names (background first).
        options: see FetchOptions.
        command: the command line recorded in the manifest.
        align: align the label vectors to the imagery before rasterising; the fetched
            ones are kept as `labels-source.gpkg`, the aligned ones become `labels.gpkg`.
    """
    options = options or FetchOptions()
    classes = classes if isinstance(classes, ClassMap) else classes_from_names(classes)
    if not imagery:
        raise InputError("--imagery", "an imagery source is required")
    if not labels:
        raise InputError("--labels", "a label source is required")
    if is_tile_template(imagery):
        TileTemplate(imagery, tuple(options.subdomains), options.tile_size)  # fail fast on a bad template
    area = resolve_aoi(bbox=bbox, aoi=aoi, place=place, geocoder_url=geocoder_url)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for place in (folder, folder / "chips"):  # one fetch per folder at a time: these are a killed run's
        remove_stale_temporaries(place)
    state = _State(folder)
    claim = _dataset_claim(state, out_dir, imagery, area, options)
    client = HttpClient(connections=options.connections, retries=options.retries, backoff=options.backoff, timeout=options.timeout)
    paths = {k: folder / f for k, f in (("imagery", "imagery.tif"), ("labels", "labels.gpkg"), ("raster", "labels.tif"), ("manifest", "manifest.json"))}
    name = options.name or folder.resolve().name

    k_img = _key(FORMAT_VERSION, imagery, area.to_json(), options.zoom, options.tile_size, list(options.subdomains), options.block)
    img = state.done("imagery", k_img, paths["imagery"])
    if img is None:
        img = state.finish("imagery", k_img, fetch_imagery(imagery, area, paths["imagery"], options, client))
    if state.steps.get("dataset", {}).get("key") != claim[0]:  # claimed once its imagery is in (a failed
        state.finish("dataset", *claim)  # first try claims nothing); a re-run writes nothing

    fetched = folder / "labels-source.gpkg" if align else paths["labels"]
    k_lab = _key(k_img, labels, list(classes.names), options.overpass_url, options.class_column, options.default_class,
                 options.road_widths, fetched.name)
    lab = state.done("labels", k_lab, fetched)
    if lab is None:
        lab = state.finish("labels", k_lab, fetch_labels(labels, area, classes, paths["imagery"], fetched, options, client, imagery))
    alignment = None
    if align:
        k_lab = _key(k_lab, align.key)
        alignment = state.done("align", k_lab, paths["labels"])
        if alignment is None:
            alignment = state.finish("align", k_lab, align.run(paths["imagery"], fetched, paths["labels"]))

    k_ras = _key(k_lab, [list(c) for c in classes.colors])
    pixels = state.done("rasterise", k_ras, paths["raster"])
    if pixels is None:
        import geopandas as gpd

        frame = gpd.read_file(paths["labels"], layer="labels")
        pixels = state.finish("rasterise", k_ras, rasterize_labels(frame, paths["imagery"], paths["raster"], classes, options.block))

    k_chip = _key(k_ras, options.chip_size, options.split_block, options.val_fraction, options.min_valid, options.chips_per_shard, name)
    chip_info = state.done("chips", k_chip, folder / "chips")
    if chip_info is None or any(len(chipfmt.shard_paths(folder / "chips", s)) != chip_info["shards"][s] for s in ("train", "val")):
        chip_info = state.finish("chips", k_chip, write_chips(paths["imagery"], paths["raster"], folder / "chips", options, name))

    with open_raster(paths["imagery"]) as src:
        grid = {
            "crs": src.crs.to_string(), "width": src.width, "height": src.height, "bands": src.count,
            "dtype": src.dtypes[0], "resolution": [abs(src.transform.a), abs(src.transform.e)],
            "transform": list(src.transform)[:6], "bounds": list(src.bounds),
        }
    attribution = [options.attribution or f"Imagery: {imagery}"]
    if lab["kind"] in ("overpass", "osm-extract") or lab.get("osm_timestamp"):
        attribution.append(OSM_ATTRIBUTION)
    manifest = {
        "format": "geolabel-dataset", "version": FORMAT_VERSION, "name": name,
        "aoi": area.to_json(), **grid,
        "classes": list(classes.names),
        "imagery": img, "labels": lab, **({"alignment": alignment} if align else {}),
        "osm_timestamp": lab.get("osm_timestamp"),
        "counts": {"pixels": pixels, "features": lab.get("features", {})},
        "chips": chip_info,
        "attribution": attribution,
        "command": command or _default_command(),
        "files": {"imagery": "imagery.tif", "labels_raster": "labels.tif", "labels_vector": "labels.gpkg", "chips": "chips/",
                  **({"labels_source": fetched.name} if align else {})},
    }
    text = json.dumps(manifest, indent=1, sort_keys=True, default=_json_default) + "\n"
    if not paths["manifest"].is_file() or paths["manifest"].read_text() != text:
        write_text_atomic(paths["manifest"], text)
    return json.loads(text)


def _dataset_claim(state: _State, out_dir: str | os.PathLike, imagery: str, area: AOI,
                   options: FetchOptions) -> tuple[str, dict]:
    """(key, description) of the dataset this fetch makes; InputError if the folder holds another one.

    A re-run resumes the same dataset; fetching another area or imagery into the folder would
    silently replace its imagery, labels and chips (and the runs trained on them would no
    longer match their data).
    """
    key = _key(imagery, area.to_json()["geometry"], options.zoom, options.tile_size)
    held = state.steps.get("dataset")
    if held is not None and held["key"] != key:
        old = held["result"]
        bbox = ",".join(f"{v:.6f}" for v in old["bbox"])
        zoom = f" at zoom {old['zoom']}" if old.get("zoom") is not None else ""
        raise InputError(out_dir, f"holds the dataset of {old['imagery']} over {bbox}{zoom}; fetching "
                                  f"{imagery} over {area.source} into it would replace its imagery, labels and chips: "
                                  "give a new --out folder")
    return key, {"imagery": imagery, "bbox": list(area.bbox), "zoom": options.zoom}


def _bytes(count: int) -> str:
    """A byte count for people: MB below a GB, GB above."""
    return f"{count / 1e9:,.1f} GB" if count >= 1e9 else f"{count / 1e6:,.1f} MB"


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _default_command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "geolabel.data.fetch.fetch_dataset"


def fetch_for_pipeline(source: dict, classes: list[str], out_dir: str | os.PathLike) -> dict:
    """Run a fetch from a pipeline `SourceConfig` (as a dict) into `out_dir`; return the manifest."""
    extra = dict(source.get("options") or {})
    geocoder_url, command = extra.pop("geocoder_url", None), extra.pop("command", None)
    options = load_config(FetchOptions, values=extra, zoom=source.get("zoom"), overpass_url=source.get("overpass_url"),
                          chip_size=source.get("chip_size"))
    return fetch_dataset(
        out_dir, source.get("imagery"), source.get("labels", "osm"), bbox=source.get("bbox"), aoi=source.get("aoi"),
        place=source.get("place"), geocoder_url=geocoder_url, classes=list(classes), options=options,
        command=command or f"geolabel pipeline fetch {json.dumps(source, sort_keys=True, default=str)}",
    )


__all__ = ["FetchOptions", "LabelAlignment", "fetch_dataset", "fetch_for_pipeline", "fetch_imagery", "fetch_labels", "write_chips"]
