"""`geolabel predict ... --beam`: windowed prediction as an Apache Beam pipeline.

One element per block of the input raster. A worker predicts its block plus a halo of
context (clipped to the raster) with geolabel's own windowed prediction
(`geolabel.predict.predictor.predict_region`: the same tiling, blending and model as a
local run, straight from the input into arrays), crops the halo away and writes the
block's class and probability rasters as COG parts, plus the block's polygons. A final
step merges the parts into `classes.tif` / `probabilities.tif` (COGs on the input grid) and merges polygons that
meet across block seams into one.

Runs in this process on Beam's DirectRunner by default; any runner (Dataflow, Flink,
Spark) through Beam's own flags (`--runner=...` and its options), as long as the
output folder is on storage every worker can reach.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rasterio.windows import Window

from geolabel.atomic import write_text_atomic
from geolabel.classes import IGNORE
from geolabel.errors import InputError
from geolabel.pipelines.config import LOCAL_BEAM_ARGS
from geolabel.progress import logger
from geolabel.vectorize.polygons import PIECE_POLYGONIZERS, PolygonSpec

PARTS = "parts"


@dataclass(frozen=True)
class Block:
    """One element: block `index` of the grid, its pixel window and the haloed read window."""

    index: int
    col: int
    row: int
    width: int
    height: int
    read_col: int
    read_row: int
    read_width: int
    read_height: int

    @property
    def window(self) -> Window:
        return Window(self.col, self.row, self.width, self.height)

    @property
    def read_window(self) -> Window:
        return Window(self.read_col, self.read_row, self.read_width, self.read_height)


def plan_blocks(width: int, height: int, block_size: int, halo: int, align: int = 1) -> list[Block]:
    """Row-major blocks of `block_size` covering the raster, each read with `halo` pixels of context.

    Read windows start on multiples of `align` (clipped to the raster): with `align` the
    prediction window step and `halo` at least one window, a block sees exactly the
    windows (positions, weights and order) that cover it in a whole-raster run.
    """
    from geolabel.data.raster import iter_windows

    blocks = []
    for i, w in enumerate(iter_windows(width, height, block_size)):
        c0 = max(0, (int(w.col_off) - halo) // align * align)
        r0 = max(0, (int(w.row_off) - halo) // align * align)
        c1 = min(width, int(w.col_off + w.width) + halo)
        r1 = min(height, int(w.row_off + w.height) + halo)
        blocks.append(Block(i, int(w.col_off), int(w.row_off), int(w.width), int(w.height), c0, r0, c1 - c0, r1 - r0))
    return blocks


def beam_options(beam_args: list[str] | None):
    """Beam PipelineOptions: the given flags, or Beam in this process (no Prism download)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args or [])
    if not any(a.startswith("--runner") for a in args):
        args += [a for a in LOCAL_BEAM_ARGS if a.split("=")[0] not in {b.split("=")[0] for b in args}]
    return PipelineOptions(args)


def _part(out_dir: Path, kind: str, index: int) -> Path:
    return out_dir / PARTS / f"{kind}-{index:06d}.tif"


@dataclass(frozen=True)
class Grid:
    """The whole raster's georeferencing, as the polygon steps need it."""

    width: int
    height: int
    transform: Any
    crs: Any
    scale: float
    metric_crs: Any
    pixel_m: float

    @classmethod
    def of(cls, src) -> Grid:
        """Ground scale / metric CRS decided exactly as `polygonize_blocks` decides them."""
        from geolabel.data.raster import ground_pixel_size
        from geolabel.vectorize.polygons import metric_frame

        scale, metric_crs = metric_frame(src.transform, src.crs, src.width, src.height)
        return cls(src.width, src.height, src.transform, src.crs, scale, metric_crs,
                   math.sqrt(math.prod(ground_pixel_size(src.transform, src.crs, src.width, src.height))))


def on_workers(spec: PolygonSpec) -> bool:
    """dp and regularized run per block on the workers (pieces cut by a seam wait for the merge
    step, as in `geolabel.vectorize.polygons.polygonize_blocks`); any other polygoniser runs once
    on the merged rasters."""
    return spec.method in PIECE_POLYGONIZERS


def _regular_classes(spec: PolygonSpec, names: tuple[str, ...]) -> set[int]:
    from geolabel.classes import building_class

    if spec.method != "regularized":
        return set()
    return {building_class(names)}


def block_pieces(classes: np.ndarray, probabilities: np.ndarray, block: Block, grid: Grid, spec: PolygonSpec,
                 names: tuple[str, ...]) -> tuple[list, list]:
    """(finished polygons, pieces waiting on a seam) of one block; probabilities in [0, 1]."""
    from geolabel.classes import IGNORE, building_class
    from geolabel.vectorize.polygons import raster_block_pieces, finish_pieces
    from geolabel.vectorize.separate import DEFAULT_CORE_M, separate_buildings

    if spec.separate:  # as polygonize_raster does to each block it reads
        building = building_class(names)
        classes = separate_buildings(classes, building, grid.pixel_m, DEFAULT_CORE_M)
    seams = (block.row > 0, block.row + block.height < grid.height, block.col > 0, block.col + block.width < grid.width)
    pieces = raster_block_pieces(classes, probabilities, block.row, block.col, {0, IGNORE}, seams)
    done = finish_pieces([p for p in pieces if not p.on_seam], grid.transform, grid.crs, grid.scale, grid.metric_crs,
                         tolerance=spec.tolerance, min_area=spec.min_area, regularize=_regular_classes(spec, names),
                         angle_tolerance=20.0)
    return done, [p for p in pieces if p.on_seam]


def merge_pieces(done: list, waiting: list, grid: Grid, spec: PolygonSpec, names: tuple[str, ...]):
    """Union the seam pieces, finish them, and return every polygon as a GeoDataFrame."""
    import geopandas as gpd

    from geolabel.vectorize.polygons import finish_pieces, merge_seam_pieces

    done = list(done) + finish_pieces(merge_seam_pieces(list(waiting)), grid.transform, grid.crs, grid.scale,
                                      grid.metric_crs, tolerance=spec.tolerance, min_area=spec.min_area,
                                      regularize=_regular_classes(spec, names), angle_tolerance=20.0)
    done = [o for o in done if not o[2] < spec.min_confidence]
    labels = [names[o[0]] if o[0] < len(names) else str(o[0]) for o in done]
    return gpd.GeoDataFrame(
        {"class": np.asarray(labels, dtype=object), "area": np.asarray([o[1] for o in done], float),
         "confidence": np.asarray([o[2] for o in done], float)},
        geometry=gpd.GeoSeries([o[3] for o in done], crs=grid.crs), crs=grid.crs,
    )


def _style(path: Path) -> dict[str, Any]:
    """Tags, band names, palette and overview resampling of a prediction output, for its parts."""
    import rasterio

    with rasterio.open(path) as src:
        style: dict[str, Any] = {"tags": src.tags(), "blocksize": max(16, src.block_shapes[0][0])}
        if any(src.descriptions):
            style["band_descriptions"] = list(src.descriptions)
        try:
            style["colormap"] = src.colormap(1)
        except ValueError:
            pass
    style["overview_resampling"] = "nearest" if "colormap" in style else "average"
    return style


class PredictBlock:
    """Beam DoFn body: predict one block, write its parts, emit its polygon records."""

    def __init__(self, model: str, input_path: str, out_dir: str, options: dict[str, Any], polygons: PolygonSpec | None,
                 grid: Grid):
        self.model_path = model
        self.input_path = input_path
        self.out_dir = Path(out_dir)
        self.options = dict(options)
        self.polygons = polygons
        self.grid = grid
        self._predict_fn = None

    def setup(self) -> None:
        """Load the model once per worker."""
        from geolabel.models import load_model
        from geolabel.predict.predictor import keras_predict_fn

        self._predict_fn = keras_predict_fn(load_model(self.model_path), precision=self.options.get("precision", "auto"))

    def process(self, block: Block) -> Iterator[dict]:
        from affine import Affine

        from geolabel.data.raster import GeoBlock, write_raster
        from geolabel.predict.predictor import predict_region, probability_tags

        if self._predict_fn is None:
            self.setup()
        transform, crs = self.grid.transform * Affine.translation(block.col, block.row), self.grid.crs
        run = predict_region(self._predict_fn, self.input_path, block.read_window, **self.options)
        dr, dc = block.row - block.read_row, block.col - block.read_col
        inner = (slice(dr, dr + block.height), slice(dc, dc + block.width))
        classes = run.classes[inner]
        probs = run.probabilities[(slice(None), *inner)]
        dtype = self.options.get("probability_dtype", "uint8")
        blocksize = self.options.get("tile", 512)
        write_raster(_part(self.out_dir, "classes", block.index), GeoBlock(classes[None], transform, crs, IGNORE),
                     tags=run.tags, blocksize=blocksize, band_descriptions=["class"],
                     colormap=run.class_map.colormap(), overview_resampling="nearest")
        write_raster(_part(self.out_dir, "probabilities", block.index),
                     GeoBlock(probs, transform, crs, None if dtype == "uint8" else float("nan")),
                     tags=probability_tags(run.tags, dtype), blocksize=blocksize,
                     band_descriptions=list(run.class_map.names), overview_resampling="average")
        done, waiting = [], []
        if self.polygons is not None and on_workers(self.polygons):
            scale = 255.0 if probs.dtype == np.uint8 else 1.0
            done, waiting = block_pieces(classes, probs.astype(np.float32) / scale, block, self.grid, self.polygons,
                                         run.class_map.names)
        yield {"block": block, "done": done, "waiting": waiting}


def _merge_rasters(out_dir: Path, blocks: list[Block], input_path: str) -> dict[str, Path]:
    """Stitch the block parts into whole-raster COGs (window by window, bounded memory)."""
    import rasterio

    from geolabel.data.raster import RasterWriter, open_raster

    with open_raster(input_path) as src:
        width, height, crs, transform = src.width, src.height, src.crs, src.transform
    written = {}
    for kind in ("classes", "probabilities"):
        first = _part(out_dir, kind, blocks[0].index)
        with rasterio.open(first) as part:
            profile = part.profile
        path = out_dir / f"{kind}.tif"
        with RasterWriter(
            path, width=width, height=height, count=profile["count"], dtype=profile["dtype"], crs=crs,
            transform=transform, nodata=profile.get("nodata"), **_style(first),
        ) as writer:
            for block in blocks:
                with rasterio.open(_part(out_dir, kind, block.index)) as part:
                    writer.write(part.read(), block.window)
        written[kind] = path
    return written


def predict_raster_beam(
    model: str | os.PathLike,
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    block_size: int = 2048,
    window: int = 1024,
    overlap: int = 64,
    polygons: PolygonSpec | None = None,
    preview: bool = True,
    beam_args: list[str] | None = None,
    keep_parts: bool = False,
    **predict_options: Any,
) -> dict[str, Path]:
    """Predict `input_path` with `model` (run folder or .keras) as a Beam pipeline, one element per block.

    Each block is read with one prediction window of context on every side, on the
    window grid of a whole-raster run, so its pixels blend exactly the windows they
    would blend in `geolabel.predict.predict_raster` (the outputs equal a local run's up
    to float rounding).

    Args:
        model: run folder or `.keras` file (loaded once per worker).
        input_path: the raster to label.
        out_dir: output folder (shared storage when the runner is distributed).
        block_size: block side in pixels (one Beam element per block).
        window, overlap: prediction windows, as in `predict_raster`.
        polygons: also write `polygons.gpkg` and `polygons.geojson` (as `geolabel predict
            --polygons`): polygonised per block on the workers, merged across block seams.
        preview: also write preview.png.
        beam_args: Beam flags (default: DirectRunner in this process, one worker).
        keep_parts: keep the per-block COG parts under `out_dir/parts/`.
        predict_options: further `predict_raster` options (batch_size, tta, classes, bands,
            scene_norm, scene_contrast, scaling, tile, probability_dtype, compress); a run's
            `scene_norm` statistics are read once from the whole raster here.

    Returns:
        {"classes", "probabilities"[, "polygons"][, "preview"]} -> path.
    """
    import apache_beam as beam
    import rasterio

    from geolabel.data.raster import open_raster
    from geolabel.models import load_model
    from geolabel.predict.predictor import keras_predict_fn
    from geolabel.predict.windows import window_geometry

    if block_size < 16:
        raise InputError("--block-size", "must be >= 16 pixels")
    input_path = os.fspath(input_path)
    out = Path(out_dir)
    model_fn = keras_predict_fn(load_model(model))
    stride = model_fn.stride
    if predict_options.get("scene_norm") is True:  # the whole scene's statistics, not each block's
        from geolabel.data.standardize import raster_band_stats

        scaling = predict_options.get("scaling")
        bands = predict_options.get("bands") or (scaling.bands if scaling else range(1, model_fn.channels + 1))
        predict_options["scene_norm"] = raster_band_stats(input_path, list(bands), scaling)
    with open_raster(input_path) as src:
        width, height = src.width, src.height
        grid = Grid.of(src)
    size, overlap = window_geometry(width, height, window, overlap, stride)
    if max(width, height) <= max(size, block_size):
        blocks = plan_blocks(width, height, max(width, height), 0)
    else:
        blocks = plan_blocks(width, height, block_size, halo=size, align=size - overlap)
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    # every block runs the whole raster's windows as they are (no refitting to the block)
    options = {**predict_options, "window": size, "overlap": overlap, "fit_to_raster": False}
    body = PredictBlock(os.fspath(model), input_path, os.fspath(out), options, polygons, grid)

    class _PredictDoFn(beam.DoFn):
        def setup(self) -> None:
            body.setup()

        def process(self, block: Block):
            yield from body.process(block)

    def merge(items: list[dict]) -> None:
        done = sorted((item["block"] for item in items), key=lambda b: b.index)
        if [b.index for b in done] != [b.index for b in blocks]:
            raise RuntimeError(f"{len(blocks) - len(done)} block(s) missing from the Beam output")
        _merge_rasters(out, done, input_path)
        if polygons is not None:
            from geolabel.vectorize.polygons import polygonize_raster, write_polygons

            if on_workers(polygons):
                with rasterio.open(out / "classes.tif") as src:
                    names = tuple(json.loads(src.tags().get("classes", '["background", "building"]')))
                items = sorted(items, key=lambda item: item["block"].index)
                done_all = [o for item in items for o in item["done"]]
                frame = merge_pieces(done_all, [p for item in items for p in item["waiting"]], grid, polygons, names)
            else:
                frame = polygonize_raster(out / "classes.tif", out / "probabilities.tif", method=polygons.method,
                                          **polygons.options())
            write_polygons(frame, out, "polygons")

    logger.info("Beam predict: %d block(s) of %d px, windows of %d px (overlap %d)", len(blocks), block_size, size, overlap)
    with beam.Pipeline(options=beam_options(beam_args)) as pipeline:
        (
            pipeline
            | "Blocks" >> beam.Create(blocks)
            | "Predict" >> beam.ParDo(_PredictDoFn())
            | "Gather" >> beam.combiners.ToList()
            | "Merge" >> beam.Map(merge)
        )
    if not keep_parts:
        shutil.rmtree(out / PARTS, ignore_errors=True)
    results = {"classes": out / "classes.tif", "probabilities": out / "probabilities.tif"}
    if polygons is not None:
        results["polygons"] = out / "polygons.gpkg"
        results["geojson"] = out / "polygons.geojson"
    if preview:
        results["preview"] = _write_preview(input_path, out, predict_options)
    info = {"blocks": len(blocks), "block_size": block_size, "window": size, "overlap": overlap,
            "runner_args": list(beam_args or [])}
    write_text_atomic(out / "beam.json", json.dumps(info, indent=1))
    return results


def _write_preview(input_path: str, out: Path, predict_options: dict[str, Any]) -> Path:
    """preview.png as local predict draws it (image with the classes overlaid)."""
    import rasterio

    from geolabel.classes import ClassMap
    from geolabel.predict.predictor import PALETTE, write_preview

    with rasterio.open(out / "classes.tif") as src:
        names = json.loads(src.tags().get("classes", '["background", "building"]'))
        palette = src.colormap(1)
    colors = tuple(tuple(palette.get(i, PALETTE[i % len(PALETTE)])[:3]) for i in range(len(names)))
    bands = list(predict_options.get("bands") or (1, 2, 3))[:3]
    return write_preview(input_path, out / "classes.tif", out / "preview.png", ClassMap(tuple(names), colors), bands)


def predict_cli(model: str, input_path: str, out_dir: str, beam_args: str, *, window: int, overlap: int, batch_size: int,
                tta: int, bands: list[int] | None, polygons: PolygonSpec | None, scene_norm: bool = False,
                scene_contrast: bool = True, scaling: Any = None) -> dict:
    """What `geolabel predict ... --beam [--beam-args FLAGS]` runs; returns the summary the command prints."""
    import shlex

    paths = predict_raster_beam(model, input_path, out_dir, window=window, overlap=overlap, polygons=polygons,
                                beam_args=shlex.split(beam_args or ""), batch_size=batch_size, tta=tta, bands=bands,
                                scene_norm=scene_norm, scene_contrast=scene_contrast, scaling=scaling)
    summary = {key: str(path) for key, path in paths.items()}
    if polygons is not None:
        import pyogrio

        summary["objects"] = int(pyogrio.read_info(paths["polygons"])["features"])
    summary["beam"] = json.loads((Path(out_dir) / "beam.json").read_text())
    return summary
