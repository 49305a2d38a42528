"""`geolabel fetch`: imagery + OSM (or any vector) labels for an area -> a training dataset folder."""

from __future__ import annotations

import shlex
import sys

import click


def _classes(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return names if names and names[0] == "background" else ("background", *names)


def _label_alignment(model_path: str, downsample: int):
    """`geolabel.align.align_file` with this model, keyed by the model file's content."""
    import hashlib
    from pathlib import Path

    from geolabel.data.fetch import LabelAlignment

    digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()[:24]

    def run(imagery, labels_in, labels_out) -> dict:
        from geolabel.align.apply import align_file

        return {"model": model_path, "model_sha256": digest, "downsample": downsample,
                **align_file(imagery, labels_in, model_path, labels_out, downsample=downsample)}

    from geolabel.align.apply import FACTORS, SMOOTH_PX  # align_file's defaults: a change re-aligns

    return LabelAlignment(key=f"{digest}:{downsample}:{FACTORS}:d4:{SMOOTH_PX:g}", run=run)


@click.command()
@click.option("--bbox", help="Area of interest W,S,E,N in EPSG:4326.")
@click.option("--aoi", "aoi_file", type=click.Path(dir_okay=False), help="Area of interest as a GeoJSON/GeoPackage/... polygon file.")
@click.option("--place", help='Area of interest as a place name, geocoded through osmnx (e.g. "Virac, Catanduanes").')
@click.option("--geocoder-url", help="Nominatim endpoint for --place (default: nominatim.openstreetmap.org).")
@click.option("--imagery", required=True, help="XYZ/TMS/WMS URL template ({z}/{x}/{y}, {-y}, {s}, {q}, {bbox-epsg-3857}) or a local/remote GeoTIFF/COG.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML with FetchOptions fields (geolabel.data.fetch); flags override it.")
@click.option("--zoom", type=int, help="Tile zoom level (tile and WMS sources).")
@click.option("--tile-size", type=int, help="Tile side in pixels (default 256).")
@click.option("--subdomains", help="Values of {s}: letters, or a comma-separated list (default abc).")
@click.option("--labels", default="osm", show_default=True, help='"osm" (Overpass), an .osm/.osm.bz2/.osm.pbf extract, or a vector file.')
@click.option("--overpass-url", help="Overpass interpreter endpoint for --labels osm.")
@click.option("--classes", default="background,building", show_default=True, help="Class names, background first (building, road, water, landuse for OSM).")
@click.option("--class-column", help="Column of a vector label file holding class names or ids.")
@click.option("--chip-size", type=int, help="Training chip side in pixels (default 256).")
@click.option("--val-fraction", type=float, help="Share of spatial blocks used for validation (default 0.2).")
@click.option("--split-block", type=int, help="Side of a train/val split block, in chips (default 4).")
@click.option("--connections", type=int, help="Concurrent HTTP requests (default 8).")
@click.option("--retries", type=int, help="Retries of a failing request: timeouts, 429, 5xx (default 6).")
@click.option("--timeout", type=float, help="HTTP timeout in seconds (default 20).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Tile cache folder (default: OUT/cache/tiles).")
@click.option("--attribution", help="Imagery attribution line for the manifest.")
@click.option("--name", help="Dataset name written into the chips (default: the folder name).")
@click.option("--align", "align_model", type=click.Path(exists=True, dir_okay=False),
              help="Alignment model (.keras, see `geolabel align`): move the label polygons onto the imagery before rasterising.")
@click.option("--align-downsample", default=1, show_default=True, type=click.IntRange(1),
              help="Average the imagery down by this factor for --align (the alignment model's training resolution).")
@click.option("--yes", is_flag=True, help="Fetch a tile job of more than 100,000 tiles (refused otherwise, with its size).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Dataset folder (re-running resumes).")
def fetch(bbox, aoi_file, place, geocoder_url, imagery, config_file, labels, classes, align_model, align_downsample, yes, out,
          **flags) -> None:
    """Fetch imagery and labels for an area into a dataset folder.

    Writes OUT/imagery.tif (COG), labels.tif, labels.gpkg, manifest.json and chips/
    (train/val TFRecords split by spatial blocks). Re-running the same command skips
    finished work. With --align, the fetched labels are kept as labels-source.gpkg and
    labels.gpkg holds them aligned to the imagery.
    """
    from dataclasses import replace

    from geolabel.cli import output
    from geolabel.config import load_config
    from geolabel.data.fetch import FetchOptions, fetch_dataset

    options = load_config(FetchOptions, config_file, **flags)
    if yes:
        options = replace(options, max_tiles=None)
    command = "geolabel " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("fetch"):]) if "fetch" in sys.argv else None
    align = _label_alignment(align_model, align_downsample) if align_model else None
    output(out, command="fetch", marks=("manifest.json", ".fetch-state.json", "imagery.tif", "cache"),
           inputs=(imagery, labels, aoi_file, align_model, config_file))
    manifest = fetch_dataset(
        out, imagery, labels, bbox=bbox, aoi=aoi_file, place=place, geocoder_url=geocoder_url, classes=_classes(classes),
        options=options, command=command, align=align,
    )
    chips = manifest["chips"]
    click.echo(
        f"{out}: {manifest['width']}x{manifest['height']} px {manifest['crs']}, "
        f"{sum(manifest['counts']['features'].values())} label features, chips train {chips['train']} val {chips['val']}"
    )
