"""`geolabel demo`: the whole idea on the bundled real sample, offline, in a few minutes.

fetch (loopback tile server + bundled OSM) -> pretrain on noisy OSM -> fine-tune on clean
labels -> evaluate on a held-out part -> predict an unseen city (and again with the model shipped in
the package, no training) -> polygons -> map-update
diff -> export -> serve -> one request to the endpoint; then a summary table and a report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

# Training budgets (seconds of wall time per stage): "full" is the README's demo.
BUDGETS = {"full": (150.0, 90.0), "small": (25.0, 15.0)}


@dataclass
class Step:
    name: str
    seconds: float
    result: str


@dataclass
class Demo:
    out: Path
    steps: list[Step] = field(default_factory=list)

    def run(self, name: str, fn: Callable[[], tuple[Any, str]]) -> Any:
        click.echo(click.style(f"==> {name}", bold=True), err=True)
        start = time.perf_counter()
        value, result = fn()
        self.steps.append(Step(name, time.perf_counter() - start, result))
        click.echo(f"    {result} ({self.steps[-1].seconds:.1f} s)", err=True)
        return value


def _halves(image_path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Lon/lat bboxes of the left (fine-tune) and right (held-out) halves of a raster."""
    from rasterio.warp import transform_bounds

    from geolabel.data.raster import open_raster

    with open_raster(image_path) as src:
        left, bottom, right, top = src.bounds
        mid = (left + right) / 2
        return (transform_bounds(src.crs, "EPSG:4326", left, bottom, mid, top),
                transform_bounds(src.crs, "EPSG:4326", mid, bottom, right, top))


def _crop(image_path: Path, bbox_lonlat: tuple[float, ...], out_path: Path) -> Path:
    """The part of a raster inside a lon/lat bbox, as a COG."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    from geolabel.data.raster import open_raster, read_block, write_raster

    with open_raster(image_path) as src:
        bounds = transform_bounds("EPSG:4326", src.crs, *bbox_lonlat)
        window = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        block = read_block(src, window.intersection(src.window(*src.bounds)))
    return write_raster(out_path, block)


def _outlines_png(imagery: Path, labels: Path, out_path: Path) -> Path:
    """PNG of the imagery with the outlines of a vector file (OSM or predicted) drawn over it."""
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from geolabel.data.raster import read_raster

    block = read_raster(imagery)
    frame = gpd.read_file(labels)
    if frame.crs is not None and block.crs is not None:
        frame = frame.to_crs(block.crs)
    left, bottom, right, top = block.bounds
    fig, ax = plt.subplots(figsize=(6, 6 * block.height / block.width), dpi=120)
    ax.imshow(np.moveaxis(block.array[:3], 0, -1), extent=(left, right, bottom, top))
    frame.boundary.plot(ax=ax, color="#e6194b", linewidth=0.8)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_axis_off()
    fig.savefig(out_path, bbox_inches="tight", pad_inches=0)
    plt.close(fig)
    return out_path


def run_demo(out: Path, budget: str = "full") -> dict:
    """Run every step of the demo into `out`; returns the summary (also written as JSON)."""
    import numpy as np

    from geolabel import sample
    from geolabel.data.fetch import FetchOptions, fetch_dataset
    from geolabel.data.rasterize import mask_to_vectors
    from geolabel.data.tiles import local_tile_range
    from geolabel.data.tileserver import TileServer
    from geolabel.evaluate.report import evaluate
    from geolabel.mapupdate.update import map_update_files
    from geolabel.predict.predictor import keras_predict_fn, predict_raster
    from geolabel.predict.resample import model_resampling, predict_resampled
    from geolabel.predict.run_inputs import RunInputs
    from geolabel.pretrained import PRETRAINED
    from geolabel.serving.client import ServingClient
    from geolabel.serving.export import export_run
    from geolabel.serving.server import ModelServer
    from geolabel.models import load_model
    from geolabel.train.trainer import TrainConfig, train_two_stage
    from geolabel.vectorize.polygons import polygonize_raster, write_polygons

    pretrain_s, finetune_s = BUDGETS[budget]
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out)
    summary: dict[str, Any] = {"budget": budget}
    zoom = sample.SAMPLE_ZOOM

    with TileServer(sample.OAM_DIR) as tiles:
        def fetch_city(city: str):
            template = f"{tiles.url}/{city}/tiles/{{z}}/{{x}}/{{y}}.jpg"
            bbox = local_tile_range(sample.OAM_DIR / city / "tiles", zoom).bounds_lonlat()
            manifest = fetch_dataset(
                out / "data" / f"osm-{city}", template, str(sample.OAM_DIR / city / "osm-buildings.geojson"),
                bbox=bbox, options=FetchOptions(zoom=zoom, chip_size=128, split_block=1, val_fraction=0.2,
                                                default_class="building", name=city,
                                                attribution="Imagery (c) OpenAerialMap contributors, CC BY 4.0"),
                command=f"geolabel fetch --imagery {template} --zoom {zoom} (demo)")
            chips = manifest.get("chips", {})
            return manifest, f"{city}: {manifest['width']}x{manifest['height']} px, {chips.get('train', '?')} train / {chips.get('val', '?')} val chips"

        demo.run(f"fetch noisy OSM labels ({sample.PRETRAIN_CITY}, loopback tile server)", lambda: fetch_city(sample.PRETRAIN_CITY))
        demo.run(f"fetch the unseen city ({sample.HELD_OUT_CITY})", lambda: fetch_city(sample.HELD_OUT_CITY))

    fine_bbox, held_bbox = _halves(sample.CLEAN_IMAGE)

    def fetch_clean():
        vectors = mask_to_vectors(sample.CLEAN_MASK, out / "data" / "clean-austin-buildings.geojson")
        manifest = fetch_dataset(out / "data" / "clean-austin", str(sample.CLEAN_IMAGE), str(vectors), bbox=fine_bbox,
                                 options=FetchOptions(chip_size=128, split_block=1, default_class="building", name="austin"),
                                 command="geolabel fetch --imagery inria-austin/image.tif (left half, demo)")
        return manifest, f"clean Inria labels, left half: {manifest['width']}x{manifest['height']} px"

    demo.run("fetch clean labels (Inria Austin, left half)", fetch_clean)

    run_dir = out / "run"

    def train():
        common = dict(model="unet", model_config={"depth": 4, "width": 16, "norm": "group"}, crop=128, batch_size=8,
                      epochs=3, steps_per_epoch=400, lr=3e-3, schedule="onecycle", loss="ce_jaccard", seed=0)
        pre = TrainConfig(**common, train=[str(out / "data" / f"osm-{sample.PRETRAIN_CITY}")], time_limit_s=pretrain_s)
        fine = TrainConfig(**{**common, "lr": 1e-3}, train=[str(out / "data" / "clean-austin")], time_limit_s=finetune_s,
                           freeze_encoder_steps=20)
        if (run_dir / "model.keras").is_file():
            metrics = json.loads((run_dir / "metrics.json").read_text())
        else:  # a finished pretraining stage is reused by train_two_stage
            metrics = train_two_stage(pre, fine, run_dir)
        return metrics, f"pretrained on OSM, fine-tuned on clean labels; val building IoU {metrics.get('val_iou', float('nan')):.3f}"

    demo.run("train: pretrain on OSM, fine-tune on clean", train)
    model = load_model(run_dir)
    predict_fn = keras_predict_fn(model)

    def held_out():
        image = _crop(sample.CLEAN_IMAGE, held_bbox, out / "data" / "austin-held-out.tif")
        result = predict_raster(predict_fn, image, out / "predict-austin", window=512, overlap=32)
        report = evaluate(out / "predict-austin", sample.CLEAN_MASK, out / "evaluate-austin", polygons="dp", image=image)
        iou = report["overall"]["iou"] if "overall" in report else report.get("iou")
        summary["held_out_iou"] = iou
        return report, f"held-out half: cumulative building IoU {iou:.3f}, {result.megapixels_per_second:.2f} Mpx/s"

    demo.run("evaluate on the held-out clean half", held_out)

    city_image = out / "data" / f"osm-{sample.HELD_OUT_CITY}" / "imagery.tif"
    city_osm = sample.OAM_DIR / sample.HELD_OUT_CITY / "osm-buildings.geojson"

    def predict_city():
        result = predict_raster(predict_fn, city_image, out / "predict-city", window=512, overlap=32)
        report = evaluate(out / "predict-city", city_osm, out / "evaluate-city", polygons=None)
        iou = report["overall"]["iou"] if "overall" in report else report.get("iou")
        summary["city_iou_vs_osm"] = iou
        return result, f"{result.width}x{result.height} px, building IoU vs OSM {iou:.3f}"

    city = demo.run(f"predict the unseen city ({sample.HELD_OUT_CITY})", predict_city)

    def predict_city_pretrained():
        expects = RunInputs.of(PRETRAINED)
        factor, tags = model_resampling(expects.card, city_image)
        result = predict_resampled(keras_predict_fn(load_model(PRETRAINED)), city_image, out / "predict-city-pretrained",
                                   factor=factor, scene_norm=expects.scene_norm, scene_contrast=expects.scene_contrast,
                                   tags=tags)
        report = evaluate(out / "predict-city-pretrained", city_osm, out / "evaluate-city-pretrained", polygons=None)
        iou = report["overall"]["iou"]
        summary["city_iou_vs_osm_shipped_model"] = iou
        return result, f"no training: building IoU vs OSM {iou:.3f} (input resampled x{factor:.2f} to the model's resolution)"

    demo.run(f"predict the unseen city with the shipped model ({PRETRAINED})", predict_city_pretrained)

    def polygons():
        frame = polygonize_raster(city.classes, city.probabilities, method="mesh")
        paths = write_polygons(frame, out / "predict-city")
        _outlines_png(city_image, paths["gpkg"], out / "predict-city" / "polygons.png")
        summary["polygons"] = len(frame)
        return paths, f"{len(frame)} building polygons (mesh polygoniser)"

    demo.run("polygons", polygons)

    def mapupdate():
        result = map_update_files(city_image, city_osm, out / "mapupdate", probabilities_path=city.probabilities, source="geolabel demo")
        summary["map_update"] = result["counts"]
        return result, ", ".join(f"{k} {v}" for k, v in result["counts"].items())

    demo.run("map-update diff against OSM", mapupdate)

    def export():
        path = export_run(run_dir, out / "serving" / "geolabel", 1, overwrite=True)
        return path, f"SavedModel at {path}"

    demo.run("export for TF Serving", export)

    def serve():
        from geolabel.data.raster import read_raster

        window = np.moveaxis(read_raster(city_image).array[:3, :256, :256], 0, -1)[None].astype("float32")
        with ModelServer(model_name="geolabel", model_base_path=out / "serving" / "geolabel", rest_api_port=0, port=None,
                         host="127.0.0.1") as server:
            endpoint = f"http://127.0.0.1:{server.rest_port}/v1/models/geolabel"
            with ServingClient(endpoint) as client:
                remote = client(window)
        local = predict_fn(window)
        agree = float((remote.argmax(-1) == np.asarray(local).argmax(-1)).mean())
        summary["endpoint_agreement"] = agree
        return agree, f"{endpoint} answered; {agree:.1%} of pixels agree with in-process prediction"

    demo.run("serve and call the endpoint", serve)

    pngs = {
        "Imagery and OSM labels (unseen city)": _outlines_png(city_image, city_osm, out / "imagery-osm.png"),
        "Prediction": city.preview,
        "Prediction of the shipped model, no training": out / "predict-city-pretrained" / "preview.png",
        "Polygons": out / "predict-city" / "polygons.png",
        "Map-update statuses": out / "mapupdate" / "preview.png",
        "Training curves": run_dir / "curves.png",
    }
    summary["steps"] = [{"step": s.name, "seconds": round(s.seconds, 1), "result": s.result} for s in demo.steps]
    _write_report(out, summary, pngs)
    return summary


def _write_report(out: Path, summary: dict, pngs: dict[str, Path | None]) -> None:
    from geolabel import sample
    from geolabel.atomic import write_text_atomic

    lines = ["# geolabel demo report", "", "| step | time (s) | result |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['seconds']} | {s['result']} |" for s in summary["steps"]]
    lines += ["", "## Pictures", ""]
    for title, path in pngs.items():
        if path is not None and Path(path).is_file():
            lines += [f"### {title}", "", f"![{title}]({Path(path).relative_to(out)})", ""]
    lines += ["## Data", "", sample.ATTRIBUTION.read_text()]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"), show_default=True,
              help="Folder for every output; a re-run reuses finished steps.")
@click.option("--budget", type=click.Choice(sorted(BUDGETS)), default="full", show_default=True,
              help="Training time: 'small' is for tests.")
def demo(out: Path, budget: str) -> None:
    """Run the whole workflow on the bundled real sample, offline."""
    from geolabel.cli import output

    output(out, command="demo", marks=("data", "report.md"))
    summary = run_demo(out, budget)
    click.echo("")
    click.echo(f"{'step':<52} {'time':>7}  result")
    for step in summary["steps"]:
        click.echo(f"{step['step']:<52} {step['seconds']:>6.1f}s  {step['result']}")
    click.echo(f"\nReport: {out / 'report.md'}   Summary: {out / 'summary.json'}")
