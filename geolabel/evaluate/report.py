"""`geolabel evaluate`: score predictions against a reference, per file, per city and overall.

A prediction is a `geolabel predict` output folder (`classes.tif`, optional polygons
`*.gpkg`) or a class raster; the reference is a raster (class ids with 255 = ignore, or
an Inria-style 0/255 building mask) or vectors (GeoPackage/GeoJSON, rasterised on the
prediction's grid). Folders of files are paired by file name; the city of a file is the
leading letters of its name (Inria: austin1.tif -> austin). Writes `evaluation.json`,
`evaluation.md` and one `overlay-NAME.png` per file (white: hit, red: false alarm,
blue: miss).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geolabel.atomic import atomic_path, write_text_atomic
from geolabel.classes import IGNORE, ClassMap, building_class
from geolabel.data.raster import iter_windows, open_raster
from geolabel.errors import InputError
from geolabel.evaluate.metrics import pixel_scores, polygon_scores
from geolabel.metrics import confusion_matrix
from geolabel.progress import logger, progress

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".png"}
VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb"}


@dataclass
class Pair:
    """One prediction and its reference."""

    name: str
    city: str
    classes: Path
    polygons: Path | None
    reference: Path


def city_of(name: str) -> str:
    """The city of an Inria-style file name: its leading letters ("austin12" -> "austin")."""
    match = re.match(r"[A-Za-z_\-]*[A-Za-z]", Path(name).stem)
    return match.group(0).rstrip("_-") if match else Path(name).stem


def _prediction(path: Path) -> tuple[Path, Path | None]:
    """(class raster, polygons file or None) of a prediction folder or file."""
    if path.is_dir():
        classes = path / "classes.tif"
        if not classes.is_file():
            raise InputError(path, "not a prediction folder (no classes.tif)")
        gpkgs = sorted(path.glob("*.gpkg"))
        return classes, gpkgs[0] if gpkgs else None
    return path, None


def pair_inputs(pred: str | os.PathLike, truth: str | os.PathLike, city: str | None = None) -> list[Pair]:
    """Pair predictions and references: file with file, or folders by file name (stem)."""
    p, t = Path(pred), Path(truth)
    for path in (p, t):
        if not path.exists():
            raise InputError(path, "no such file or folder")
    if p.is_dir() and not (p / "classes.tif").is_file():
        if not t.is_dir():
            raise InputError(truth, "must be a folder when the predictions are a folder of predictions")
        refs = {f.stem: f for f in t.iterdir() if f.suffix.lower() in RASTER_SUFFIXES | VECTOR_SUFFIXES}
        pairs = []
        for item in sorted(p.iterdir()):
            stem = item.name if item.is_dir() else item.stem
            if stem in refs and (item.is_dir() or item.suffix.lower() in RASTER_SUFFIXES):
                classes, polys = _prediction(item)
                pairs.append(Pair(stem, city or city_of(stem), classes, polys, refs[stem]))
        if not pairs:
            raise InputError(pred, f"no prediction has a reference of the same name in {truth}")
        return pairs
    classes, polys = _prediction(p)
    name = p.name if p.is_dir() else t.stem  # a predict folder names its scene
    return [Pair(name, city or city_of(name), classes, polys, t)]


# --------------------------------------------------------------------------- reading references


class _Reference:
    """Reference classes on a prediction's grid, window by window (raster or vectors)."""

    def __init__(self, path: Path, pred_src, class_map: ClassMap):
        self.path = path
        self.pred = pred_src
        self.class_map = class_map
        self.vector = path.suffix.lower() in VECTOR_SUFFIXES
        with contextlib.ExitStack() as stack:  # a read failing here reaches open_raster, which names the file
            if self.vector:
                if pred_src.crs is None:
                    raise InputError(pred_src.name, f"has no CRS, so the vectors of {path} cannot be placed on it")
                self.frame = _read_vectors(path, pred_src.crs, class_map)
            else:
                src = stack.enter_context(open_raster(path))
                same = (src.crs == pred_src.crs and src.transform.almost_equals(pred_src.transform)
                        and (src.width, src.height) == (pred_src.width, pred_src.height))
                if src.crs is None and pred_src.crs is not None or src.crs is not None and pred_src.crs is None:
                    same = (src.width, src.height) == (pred_src.width, pred_src.height)
                    if not same:
                        raise InputError(path, "has no CRS in common with the prediction and a different size")
                self.src = src if same else stack.enter_context(WarpedVRT(
                    src, crs=pred_src.crs, transform=pred_src.transform, width=pred_src.width,
                    height=pred_src.height, resampling=Resampling.nearest))
                sample = src.read(1, out_shape=(min(src.height, 256), min(src.width, 256)), resampling=Resampling.nearest)
                values = set(np.unique(sample).tolist())
                self.binary_mask = src.nodata is None and values <= {0, 255} and 255 in values
                self.nodata = src.nodata
            self._stack = stack.pop_all()

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> np.ndarray:
        shape = out_shape or (int(window.height), int(window.width))
        if self.vector:
            return _rasterize(self.frame, self.pred.window_transform(window), shape, int(window.width) / shape[1])
        data = self.src.read(1, window=window, out_shape=shape, resampling=Resampling.nearest)
        if self.binary_mask:  # Inria-style mask: 255 = building, 0 = background
            return (data > 127).astype(np.uint8)
        out = data.astype(np.int64)
        if self.nodata is not None and self.nodata != IGNORE:
            out[data == self.nodata] = IGNORE
        return out

    def __enter__(self) -> _Reference:
        return self

    def __exit__(self, *exc) -> None:
        """Close the reference raster; its open_raster block sees the error, so a bad read names the file."""
        self._stack.__exit__(*exc)


def _read_vectors(path: Path, crs, class_map: ClassMap):
    import geopandas as gpd

    try:
        frame = gpd.read_file(path)
    except Exception as err:  # pyogrio raises its own error types
        raise InputError(path, f"not a readable vector file ({str(err).splitlines()[0][:200]})") from err
    if frame.crs is None:
        raise InputError(path, "has no CRS")
    frame = frame[frame.geometry.notna() & frame.geom_type.isin(["Polygon", "MultiPolygon"])].to_crs(crs)
    if "class" in frame.columns:
        def to_id(value) -> int:
            if isinstance(value, str):
                return class_map.index(value) if value in class_map.names else (int(value) if value.isdigit() else 1)
            return int(value)
        frame["class_id"] = [to_id(v) for v in frame["class"]]
    else:
        frame["class_id"] = 1
    return frame


def _rasterize(frame, transform, shape: tuple[int, int], scale: float) -> np.ndarray:
    from rasterio import features

    out = np.zeros(shape, np.uint8)
    if len(frame) == 0:
        return out
    t = transform * transform.scale(scale)
    return features.rasterize(zip(frame.geometry, frame["class_id"]), out_shape=shape, transform=t, fill=0,
                              dtype="uint8")


# --------------------------------------------------------------------------- polygons


def _metric(frame):
    """The frame in a metric CRS (UTM for geographic CRSs)."""
    if frame.crs is not None and frame.crs.is_geographic:
        return frame.to_crs(frame.estimate_utm_crs())
    return frame


def _polygons_of(pair: Pair, ref: _Reference, pred_src, class_map: ClassMap, method: str, positive: int,
                 truth_polygons: Path | None = None, separate: bool = True):
    """(predicted polygons, reference polygons) of the positive class, in one metric CRS."""
    import geopandas as gpd

    from geolabel.vectorize.polygons import dp_polygons, polygonize_raster

    name = class_map.names[positive]
    if pair.polygons is not None:
        pred = gpd.read_file(pair.polygons)
    else:
        pred = polygonize_raster(pair.classes, method=method, class_map=class_map, separate=separate)
    pred = pred[pred["class"].astype(str).isin([name, str(positive)])]
    if truth_polygons is not None:
        frame = _read_vectors(truth_polygons, pred_src.crs, class_map)
        truth = frame[frame["class_id"] == positive]
    elif ref.vector:
        truth = ref.frame[ref.frame["class_id"] == positive]
    else:
        full = Window(0, 0, pred_src.width, pred_src.height)
        truth = dp_polygons(ref.read(full), pred_src.transform, pred_src.crs, tolerance=0.0, class_map=class_map)
        truth = truth[truth["class"].astype(str).isin([name, str(positive)])]
    truth = gpd.GeoDataFrame(geometry=truth.geometry.values, crs=truth.crs)
    pred = gpd.GeoDataFrame(geometry=pred.geometry.values, crs=pred.crs)
    if pred.crs is not None and truth.crs is not None and pred.crs != truth.crs:
        pred = pred.to_crs(truth.crs)
    return _metric(pred).geometry.values, _metric(truth).to_crs(_metric(pred).crs if len(pred) else
                                                                 _metric(truth).crs).geometry.values


# --------------------------------------------------------------------------- overlays


def _overlay(pair: Pair, pred_src, ref: _Reference, out_path: Path, image: Path | None, max_size: int) -> Path:
    from PIL import Image

    scale = max(pred_src.width, pred_src.height) / max_size
    w = max(1, round(pred_src.width / max(scale, 1)))
    h = max(1, round(pred_src.height / max(scale, 1)))
    pred = pred_src.read(1, out_shape=(h, w), resampling=Resampling.nearest)
    truth = ref.read(Window(0, 0, pred_src.width, pred_src.height), out_shape=(h, w))
    rgb = np.zeros((h, w, 3), np.float32)
    if image is not None:
        with open_raster(image) as src:
            img = src.read(list(range(1, min(src.count, 3) + 1)), out_shape=(min(src.count, 3), h, w),
                           resampling=Resampling.average).astype(np.float32)
        rgb = np.moveaxis(np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img, 0, -1) * 0.5
    p, t = pred == 1, truth == 1
    colours = {(True, True): (255, 255, 255), (True, False): (230, 40, 40), (False, True): (40, 110, 255)}
    for (pv, tv), colour in colours.items():
        sel = (p == pv) & (t == tv)
        rgb[sel] = colour if image is None else 0.4 * rgb[sel] + 0.6 * np.array(colour)
    rgb[truth == IGNORE] = (90, 90, 90)
    with atomic_path(out_path) as tmp:
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(tmp, format="PNG")
    return out_path


# --------------------------------------------------------------------------- the driver


def evaluate(
    pred: str | os.PathLike,
    truth: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    class_map: ClassMap | None = None,
    polygons: str | None = "regularized",
    separate: bool = True,
    image: str | os.PathLike | None = None,
    city: str | None = None,
    truth_polygons: str | os.PathLike | None = None,
    iou_threshold: float = 0.5,
    block_size: int = 2048,
    overlay_size: int = 1024,
) -> dict:
    """Score predictions against references; write evaluation.json, evaluation.md and overlay PNGs.

    Args:
        pred: prediction folder (`classes.tif` [+ `*.gpkg`]), class raster, or a folder of them.
        truth: reference raster or vector file, or a folder of them (paired by name).
        out_dir: where the report goes.
        class_map: classes of the prediction (default: from the `classes` tag of the raster).
        polygons: polygoniser for polygon metrics when a prediction has no polygons file
            ("dp", "regularized", ...); None skips polygon metrics.
        separate: split touching predicted buildings first, as `geolabel predict --polygons` does.
        image: imagery under the overlay (one pair only).
        city: city name of every file (default: from the file name).
        truth_polygons: reference polygons for the polygon metrics (one pair only) when the
            reference raster's own outlines are not the best polygons (e.g. OSM labels.gpkg
            beside labels.tif).
        iou_threshold: polygon match threshold.
        block_size: pixel window for the streaming pixel counts.
        overlay_size: longest side of the overlay PNGs.

    Returns:
        The report as a dict (also written as JSON).
    """
    pairs = pair_inputs(pred, truth, city)
    if truth_polygons is not None and len(pairs) > 1:
        raise InputError("--gt-polygons", "only with a single prediction and reference")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, by_city, total = [], {}, None
    cmap_used = class_map
    for pair in pairs:
        with open_raster(pair.classes) as psrc:
            cmap = class_map or _tag_class_map(psrc)
            cmap_used = cmap
            k = cmap.num_classes
            positive = building_class(cmap)
            with _Reference(pair.reference, psrc, cmap) as ref:
                conf = np.zeros((k, k), np.int64)
                for win in progress(list(iter_windows(psrc.width, psrc.height, block_size)), desc=f"evaluate {pair.name}",
                                    unit="block"):
                    conf += confusion_matrix(ref.read(win), psrc.read(1, window=win), k)
                entry = {"name": pair.name, "city": pair.city, "prediction": str(pair.classes),
                         "reference": str(pair.reference), "confusion": conf.tolist(),
                         **pixel_scores(conf, cmap.names, positive)}
                if polygons is not None:
                    p_geoms, t_geoms = _polygons_of(pair, ref, psrc, cmap, polygons, positive,
                                                    Path(truth_polygons) if truth_polygons else None, separate)
                    entry["polygons"] = polygon_scores(p_geoms, t_geoms, iou_threshold)
                    entry["polygons"]["source"] = str(pair.polygons) if pair.polygons else polygons
                    entry["polygons"]["reference_source"] = str(truth_polygons or pair.reference)
                overlay = _overlay(pair, psrc, ref, out / f"overlay-{pair.name}.png",
                                   Path(image) if image is not None and len(pairs) == 1 else None, overlay_size)
                entry["overlay"] = overlay.name
        files.append(entry)
        by_city.setdefault(pair.city, []).append(entry)
        total = conf.copy() if total is None else total + conf
    positive = building_class(cmap_used)
    cities = {}
    for name, entries in by_city.items():
        conf = sum(np.asarray(e["confusion"]) for e in entries)
        cities[name] = {"files": len(entries), **pixel_scores(conf, cmap_used.names, positive)}
        if polygons is not None:
            cities[name]["polygons"] = _sum_polygons([e["polygons"] for e in entries])
    report = {
        "protocol": "Inria: cumulative IoU and accuracy (sums over files before dividing)",
        "classes": list(cmap_used.names),
        "positive_class": cmap_used.names[positive],
        "iou_threshold": iou_threshold,
        "overall": {"files": len(files), **pixel_scores(total, cmap_used.names, positive)},
        "cities": cities,
        "files": files,
    }
    if polygons is not None:
        report["overall"]["polygons"] = _sum_polygons([e["polygons"] for e in files])
    write_text_atomic(out / "evaluation.json", json.dumps(report, indent=2, allow_nan=True))
    write_text_atomic(out / "evaluation.md", markdown_report(report))
    logger.info("evaluation: IoU %.4f, accuracy %.4f over %d files", report["overall"]["iou"],
                report["overall"]["accuracy"], len(files))
    return report


def _tag_class_map(src) -> ClassMap:
    names = json.loads(src.tags().get("classes", "null") or "null")
    if names:
        return ClassMap(tuple(names), tuple((0, 0, 0) for _ in names))
    return ClassMap()


def _sum_polygons(items: Sequence[dict]) -> dict:
    """Polygon scores pooled over files (counts summed; PoLiS and IoU weighted by matches)."""
    n_pred = sum(i["predicted"] for i in items)
    n_ref = sum(i["reference"] for i in items)
    n_match = sum(i["matched"] for i in items)
    precision = n_match / n_pred if n_pred else float("nan")
    recall = n_match / n_ref if n_ref else float("nan")

    def weighted(key: str) -> float:
        pairs = [(i[key], i["matched"]) for i in items if i["matched"] and not math.isnan(i[key])]
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs) if pairs else float("nan")

    return {
        "predicted": n_pred, "reference": n_ref, "matched": n_match, "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if n_match else 0.0,
        "found_at_0.25": sum(i["found_at_0.25"] * i["reference"] for i in items) / n_ref if n_ref else float("nan"),
        "mean_matched_iou": weighted("mean_matched_iou"), "polis": weighted("polis"),
        "vertices_predicted": sum(i["vertices_predicted"] for i in items),
        "vertices_reference": sum(i["vertices_reference"] for i in items),
    }


def markdown_report(report: dict) -> str:
    """The report as Markdown tables."""
    pos = report["positive_class"]
    lines = ["# Evaluation", "", f"Protocol: {report['protocol']}. Positive class: `{pos}`.", "",
             "## Pixels", "", f"| scope | files | {pos} IoU | accuracy | mean IoU | pixels |", "|---|---|---|---|---|---|"]
    rows = [("overall", report["overall"])] + [(f"city {c}", v) for c, v in report["cities"].items()] + \
        [(f"file {f['name']}", {**f, "files": 1}) for f in report["files"]]
    for label, r in rows:
        lines.append(f"| {label} | {r['files']} | {r['iou']:.4f} | {r['accuracy']:.4f} | {r['mean_iou']:.4f} | {r['pixels']} |")
    lines += ["", "Per-class IoU (overall): " + ", ".join(f"{k} {v:.4f}" for k, v in report["overall"]["per_class_iou"].items())]
    if "polygons" in report["overall"]:
        lines += ["", f"## Polygons (matched at IoU >= {report['iou_threshold']})", "",
                  "| scope | predicted | reference | matched | precision | recall | F1 | found at IoU 0.25 | mean IoU | PoLiS (m) "
                  "| vertices pred / ref |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        rows = [("overall", report["overall"]["polygons"])] + [(f"city {c}", v["polygons"]) for c, v in report["cities"].items()] + \
            [(f"file {f['name']}", f["polygons"]) for f in report["files"]]
        for label, p in rows:
            lines.append(f"| {label} | {p['predicted']} | {p['reference']} | {p['matched']} | {p['precision']:.3f} | "
                         f"{p['recall']:.3f} | {p['f1']:.3f} | {p['found_at_0.25']:.3f} | {p['mean_matched_iou']:.3f} | {p['polis']:.2f} | "
                         f"{p['vertices_predicted']} / {p['vertices_reference']} |")
    lines += ["", "Overlays: white = hit, red = false alarm, blue = miss, grey = ignored.", ""]
    lines += [f"![{f['name']}]({f['overlay']})" for f in report["files"] if f.get("overlay")]
    return "\n".join(lines) + "\n"
