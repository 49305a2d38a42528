"""`geolabel view` on real predict and mapupdate folders: the served page, tiles and vectors over
loopback, the self-contained export, bad input, and (in Debian's chromium, which `make test` installs) what a
browser draws."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import morecantile
import numpy as np
import pytest
from PIL import Image

from geolabel.classes import STATUS_COLORS
from geolabel.cli import main
from geolabel.view import collect_layers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(predict_folder, mapupdate_folder):
    """The base URL of `geolabel view PREDICT MAPUPDATE --port 0`, run as its own process."""
    process = subprocess.Popen([sys.executable, "-m", "geolabel.cli", "view", str(predict_folder), str(mapupdate_folder),
                                "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        return err.code, b"", ""


def _config(page: str) -> dict:
    return json.loads(re.search(r"window\.GEOLABEL_VIEW = (\{.*\});</script>", page).group(1))


def test_view_serves_the_page_tiles_and_vectors(served):
    status, body, kind = _get(served)
    assert status == 200 and kind.startswith("text/html")
    page = body.decode()
    assert "/static/leaflet/leaflet.js" in page and "://" not in page  # everything from this server
    config = _config(page)
    kinds = {layer["kind"]: layer for layer in config["layers"]}
    assert set(kinds) == {"imagery", "classes", "probability", "polygons", "changes"}
    assert any("CC BY 4.0" in line for line in config["attribution"])
    assert any("ODbL" in line for line in config["attribution"])
    assert [e["label"] for g in config["legend"] if g["title"] == "Map-update status" for e in g["entries"]] == list(STATUS_COLORS)
    for path in ("/static/leaflet/leaflet.js", "/static/leaflet/leaflet.css", "/static/view.js", "/static/leaflet/images/layers.png"):
        assert _get(served.rstrip("/") + path)[0] == 200, path

    (south, west), (north, east) = config["bounds"]
    imagery = kinds["imagery"]
    tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, imagery["maxzoom"])
    pixels = {}
    for name in ("imagery", "classes", "probability"):
        url = served.rstrip("/") + kinds[name]["tiles"].format(z=tile.z, x=tile.x, y=tile.y)
        status, body, kind = _get(url)
        assert status == 200 and kind == "image/png", name
        pixels[name] = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))
        assert pixels[name].shape == (256, 256, 4)
    assert pixels["imagery"][..., 3].mean() > 128 and pixels["imagery"][..., :3].std() > 10  # real imagery
    assert 0 < (pixels["classes"][..., 3] > 0).mean() < 1  # buildings opaque, background transparent
    far = served.rstrip("/") + imagery["tiles"].format(z=tile.z, x=tile.x + 50, y=tile.y)
    assert _get(far)[0] == 404

    changes = json.loads(_get(served.rstrip("/") + kinds["changes"]["url"])[1])
    assert changes["type"] == "FeatureCollection" and len(changes["features"]) > 5
    props = changes["features"][0]["properties"]
    assert {"status", "confidence", "osm_id", "area_m2"} <= set(props) and props["area_m2"] > 0
    polygons = json.loads(_get(served.rstrip("/") + kinds["polygons"]["url"])[1])
    assert len(polygons["features"]) > 5
    assert _get(served.rstrip("/") + "/vectors/0.geojson")[0] == 404  # layer 0 is a raster
    assert _get(served.rstrip("/") + "/static/../page.py")[0] == 404
    assert _get(served.rstrip("/") + "/page.py")[0] == 404


def test_export_is_one_self_contained_page(predict_folder, mapupdate_folder, tmp_path, capsys):
    out = tmp_path / "report.html"
    main(["view", str(predict_folder), str(mapupdate_folder), "--export", str(out)])
    page = out.read_text()
    assert not re.search(r"<(script|link|img)\b[^>]*\b(src|href)=", page)  # nothing to fetch: no CDN, no server
    config = _config(page)
    rasters = [layer for layer in config["layers"] if layer["type"] == "raster"]
    assert len(rasters) == 3 and all(layer["image"].startswith("data:image/png;base64,") for layer in rasters)
    changes = next(layer for layer in config["layers"] if layer["kind"] == "changes")
    assert len(changes["data"]["features"]) > 5
    assert "Leaflet" in page and "url(data:image/png;base64," in page  # the layer-switcher icon inlined


def test_layers_are_drawn_imagery_first_whatever_order_they_are_given_in(predict_folder, virac_dataset):
    given = [predict_folder / "polygons.parquet", predict_folder / "classes.tif", virac_dataset[0]]
    kinds = [layer.kind for layer in collect_layers(given).layers]
    assert kinds == ["imagery", "classes", "polygons"]


def test_view_refuses_what_it_cannot_show(tmp_path, capsys):
    for args in ([str(tmp_path / "missing")], [str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            main(["view", *args, "--export", str(tmp_path / "r.html")])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_a_browser_draws_the_imagery_polygons_and_legend(served, tmp_path):
    shot = tmp_path / "view.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1000,700", "--virtual-time-budget=10000", f"--screenshot={shot}", served],
                   check=True, capture_output=True, timeout=120)
    if os.environ.get("GEOLABEL_TEST_ARTIFACTS"):
        shutil.copy(shot, Path(os.environ["GEOLABEL_TEST_ARTIFACTS"]) / "geolabel-view.png")
    png = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    middle = png[150:550, 100:700]
    assert middle.std() > 20  # imagery tiles drawn (not the page's flat background)
    for color in (STATUS_COLORS["missing"], STATUS_COLORS["unchanged"]):  # change outlines and their legend
        assert (np.abs(png - color).sum(axis=2) < 30).sum() > 50, color
    legend = png[450:, 750:]
    assert (legend == 255).all(axis=2).sum() > 2000  # the white legend panel, bottom right
