"""`geolabel predict ... --beam`: windowed prediction as an Apache Beam pipeline.

One element per block of the input raster. A worker reads its block plus a halo of
context (clipped to the raster), runs geolabel's own windowed prediction on it
(`geolabel.predict.predict_raster`: the same tiling, blending and model as a local
run), crops the halo away and writes the block's class and probability rasters as
COG parts, plus the block's polygons. A final step merges the parts into
`classes.tif` / `probabilities.tif` (COGs on the input grid) and merges polygons that
meet across block seams into one.

Runs in this process on Beam's DirectRunner by default; any runner (Dataflow, Flink,
Spark) through Beam's own flags (`--runner=...` and its options), as long as the
output folder is on storage every worker can reach.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from geolabel.atomic import write_text_atomic
from geolabel.errors import InputError
from geolabel.pipelines.config import LOCAL_BEAM_ARGS
from geolabel.progress import logger

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


def plan_blocks(width: int, height: int, block_size: int, halo: int) -> list[Block]:
    """Row-major blocks of `block_size` covering the raster, each with `halo` pixels of context."""
    from geolabel.data.raster import iter_windows

    blocks = []
    for i, w in enumerate(iter_windows(width, height, block_size)):
        c0, r0 = max(0, int(w.col_off) - halo), max(0, int(w.row_off) - halo)
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


def _block_polygons(classes: np.ndarray, probabilities: np.ndarray, transform, num_classes: int) -> list[dict]:
    """Exact pixel-edge polygons of every non-background class region of a block.

    Each record keeps what a merge across seams needs: the geometry (WKB), the class,
    the pixel count and the summed class probability (for the area-weighted confidence).
    """
    import rasterio.features
    from shapely.geometry import shape

    records = []
    for value, in_class in ((c, classes == c) for c in range(1, num_classes)):
        if not in_class.any():
            continue
        labels, count = _label(in_class)
        for geom, label in rasterio.features.shapes(labels, mask=labels > 0, transform=transform, connectivity=4):
            region = labels == int(label)
            records.append(
                {
                    "wkb": shape(geom).wkb,
                    "class": int(value),
                    "pixels": int(region.sum()),
                    "prob_sum": float(probabilities[value][region].sum()),
                }
            )
    return records


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    return labels.astype(np.int32), int(count)


class PredictBlock:
    """Beam DoFn body: predict one block, write its parts, emit its polygon records."""

    def __init__(self, model: str, input_path: str, out_dir: str, options: dict[str, Any], polygons: bool):
        self.model_path = model
        self.input_path = input_path
        self.out_dir = Path(out_dir)
        self.options = dict(options)
        self.polygons = polygons
        self._model = None

    def setup(self) -> None:
        """Load the model once per worker."""
        from geolabel.serving.export import load_keras_model

        self._model = load_keras_model(self.model_path)

    def process(self, block: Block) -> Iterator[dict]:
        from geolabel.data.raster import GeoBlock, open_raster, read_block, read_raster, write_raster
        from geolabel.predict import predict_raster

        if self._model is None:
            self.setup()
        with tempfile.TemporaryDirectory(prefix=f"geolabel-block-{block.index}-") as tmp:
            with open_raster(self.input_path) as src:
                haloed = read_block(src, block.read_window)
            sub = Path(tmp) / "block.tif"
            write_raster(sub, haloed)
            predict_raster(self._model, sub, Path(tmp) / "out", **self.options)
            dc, dr = block.col - block.read_col, block.row - block.read_row
            classes = read_raster(Path(tmp) / "out" / "classes.tif")
            probs = read_raster(Path(tmp) / "out" / "probabilities.tif")
        crop = (slice(None), slice(dr, dr + block.height), slice(dc, dc + block.width))
        with open_raster(self.input_path) as src:
            transform = src.window_transform(block.window)
            crs = src.crs
        class_part = GeoBlock(classes.array[crop], transform, crs, classes.nodata)
        prob_part = GeoBlock(probs.array[crop], transform, crs, probs.nodata)
        write_raster(_part(self.out_dir, "classes", block.index), class_part)
        write_raster(_part(self.out_dir, "probabilities", block.index), prob_part)
        records = []
        if self.polygons:
            records = _block_polygons(class_part.array[0], prob_part.array, transform, prob_part.array.shape[0])
        yield {"block": block, "polygons": records}


def _merge_rasters(out_dir: Path, blocks: list[Block], input_path: str) -> dict[str, Path]:
    """Stitch the block parts into whole-raster COGs (window by window, bounded memory)."""
    import rasterio

    from geolabel.data.raster import RasterWriter, open_raster

    with open_raster(input_path) as src:
        width, height, crs, transform = src.width, src.height, src.crs, src.transform
    written = {}
    for kind in ("classes", "probabilities"):
        with rasterio.open(_part(out_dir, kind, blocks[0].index)) as first:
            profile = first.profile
            tags = first.tags()
            descriptions = list(first.descriptions) if any(first.descriptions) else None
            try:
                colormap = first.colormap(1)
            except ValueError:
                colormap = None
        path = out_dir / f"{kind}.tif"
        with RasterWriter(
            path,
            width=width,
            height=height,
            count=profile["count"],
            dtype=profile["dtype"],
            crs=crs,
            transform=transform,
            nodata=profile.get("nodata"),
            tags=tags,
            band_descriptions=descriptions,
            colormap=colormap,
            overview_resampling="nearest" if kind == "classes" else "average",
        ) as writer:
            for block in blocks:
                with rasterio.open(_part(out_dir, kind, block.index)) as part:
                    writer.write(part.read(), block.window)
        written[kind] = path
    return written


def merge_polygons(records: list[dict], crs, pixel_area: float):
    """Merge block polygons that touch across seams (same class) into one; returns a GeoDataFrame.

    Per merged polygon: `class`, `area` (CRS units^2) and `confidence` (mean probability of
    its class over its pixels).
    """
    import geopandas as gpd
    import shapely
    from shapely.ops import unary_union

    columns = {"class": [], "area": [], "confidence": [], "geometry": []}
    by_class: dict[int, list[dict]] = {}
    for record in records:
        by_class.setdefault(record["class"], []).append(record)
    for value, group in sorted(by_class.items()):
        geoms = [shapely.from_wkb(r["wkb"]) for r in group]
        tree = shapely.STRtree(geoms)
        parent = list(range(len(geoms)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        left, right = tree.query(geoms, predicate="intersects")
        for a, b in zip(left, right):
            if a < b and geoms[a].intersection(geoms[b]).length > 0:  # a shared edge, not a corner
                parent[find(a)] = find(b)
        groups: dict[int, list[int]] = {}
        for i in range(len(geoms)):
            groups.setdefault(find(i), []).append(i)
        for members in groups.values():
            geom = unary_union([geoms[i] for i in members]) if len(members) > 1 else geoms[members[0]]
            pixels = sum(group[i]["pixels"] for i in members)
            columns["class"].append(value)
            columns["area"].append(float(geom.area))
            columns["confidence"].append(sum(group[i]["prob_sum"] for i in members) / max(pixels, 1))
            columns["geometry"].append(geom)
    return gpd.GeoDataFrame(columns, geometry="geometry", crs=crs)


def predict_raster_beam(
    model: str | os.PathLike,
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    block_size: int = 1024,
    halo: int = 256,
    polygons: bool = False,
    beam_args: list[str] | None = None,
    keep_parts: bool = False,
    **predict_options: Any,
) -> dict[str, Path]:
    """Predict `input_path` with the model of `model` (run folder or .keras) as a Beam pipeline.

    Args:
        model: run folder or `.keras` file.
        input_path: the raster to label.
        out_dir: output folder (shared storage when the runner is distributed).
        block_size: block side in pixels (one Beam element per block).
        halo: context pixels read around each block (at least the prediction window size
            keeps the result independent of the block grid).
        polygons: also write `polygons.gpkg` (merged across block seams).
        beam_args: Beam flags (default: DirectRunner in this process).
        keep_parts: keep the per-block COG parts under `out_dir/parts/`.
        predict_options: passed to `geolabel.predict.predict_raster` for every block.

    Returns:
        {"classes": path, "probabilities": path[, "polygons": path]}.
    """
    import apache_beam as beam

    from geolabel.data.raster import open_raster

    if block_size < 16:
        raise InputError("--block-size", "must be >= 16 pixels")
    if halo < 0:
        raise InputError("--halo", "must be >= 0")
    input_path = os.fspath(input_path)
    out = Path(out_dir)
    with open_raster(input_path) as src:
        blocks = plan_blocks(src.width, src.height, block_size, halo)
        crs = src.crs
        pixel_area = abs(src.transform.a * src.transform.e)
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    body = PredictBlock(os.fspath(model), input_path, os.fspath(out), predict_options, polygons)

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
        if polygons:
            from geolabel.atomic import atomic_path

            records = [r for item in items for r in item["polygons"]]
            frame = merge_polygons(records, crs, pixel_area)
            path = out / "polygons.gpkg"
            with atomic_path(path) as tmp:
                frame.to_file(tmp, driver="GPKG", layer="polygons")

    logger.info("Beam predict: %d blocks of %d px (halo %d)", len(blocks), block_size, halo)
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
    write_text_atomic(out / "beam.json", json.dumps({"blocks": len(blocks), "block_size": block_size, "halo": halo}))
    names = {"classes": "classes.tif", "probabilities": "probabilities.tif"}
    if polygons:
        names["polygons"] = "polygons.gpkg"
    return {key: out / name for key, name in names.items()}
