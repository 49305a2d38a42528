"""Map update on real OSM buildings with known truth: statuses, osmChange, outputs, command."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image

from geolabel.align.data import Scene, rasterize_map, within_image
from geolabel.cli import main
from geolabel.data.osm import OsmNode
from geolabel.mapupdate import build_osc, compare, map_update, osc_problems, write_osc


def perturbed(scene: Scene, seed: int = 0):
    """Truth = the real buildings; existing map = some removed, some translated by (5, -4) px."""
    truth = within_image(scene, margin=16)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(truth.geoms))
    removed, shifted = order[:5], order[5:10]
    geoms = truth.geoms.copy()
    for i in shifted:
        geoms[i] = shapely.transform(geoms[i], lambda p: p + np.array([5.0, -4.0]))
    keep = np.setdiff1d(np.arange(len(geoms)), removed)
    existing = Scene(scene.image, scene.transform, scene.crs, geoms[keep], truth.ids[keep])
    return truth, existing, truth.geoms[removed], set(truth.ids[shifted].tolist())


def test_statuses_with_known_truth(virac_scene):
    truth, existing, removed, shifted_ids = perturbed(virac_scene)
    prob = rasterize_map(truth.geoms, *truth.shape)[..., 0]
    changes = compare(prob, existing.geoms, existing.ids)
    flagged = {c.source_id for c in changes if c.status == "shifted"}
    assert len(flagged & shifted_ids) >= 4 and len(flagged - shifted_ids) <= 1
    for c in changes:
        if c.status == "shifted" and c.source_id in shifted_ids:
            assert c.shift == (-5.0, 4.0)
    new = [c.geometry for c in changes if c.status == "new"]
    found = sum(any(g.intersection(r).area > 0.5 * r.area for g in new) for r in removed)
    assert found >= 4 and len(new) <= len(removed) + 1
    unchanged = [c for c in changes if c.status == "unchanged"]
    assert len(unchanged) >= len(existing.geoms) - 7 and all(c.confidence > 0.5 for c in unchanged)


def test_empty_prediction_marks_everything_missing(virac_scene):
    truth = within_image(virac_scene, margin=16)
    changes = compare(np.zeros(truth.shape, np.float32), truth.geoms[:5], truth.ids[:5])
    assert [c.status for c in changes] == ["missing"] * 5
    assert all(c.confidence == 1.0 for c in changes)


def test_buildings_without_imagery_get_no_status(virac_scene):
    truth = within_image(virac_scene, margin=16)
    valid = np.ones(truth.shape, bool)
    valid[:, : truth.shape[1] // 2] = False  # no imagery on the left half
    changes = compare(np.zeros(truth.shape, np.float32), truth.geoms, truth.ids, valid=valid)
    judged = {c.source_id for c in changes}
    for geom, gid in zip(truth.geoms, truth.ids):
        if geom.bounds[2] < truth.shape[1] // 2:  # wholly in the no-imagery half
            assert gid not in judged
    assert changes and all(c.status == "missing" for c in changes)


def test_osc_structure(tmp_path):
    new = [shapely.box(124.0, 13.0, 124.0001, 13.0001)]
    moved = [OsmNode(4096, 3, 124.1, 13.1, {"entrance": "yes"}), OsmNode(4097, 1, 124.1001, 13.1)]
    root = build_osc(new, moved, source="survey test")
    write_osc(tmp_path / "c.osc", root)
    assert osc_problems(tmp_path / "c.osc") == []
    tree = ET.parse(tmp_path / "c.osc").getroot()
    assert tree.tag == "osmChange" and tree.get("version") == "0.6"
    way = tree.find("create/way")
    assert int(way.get("id")) < 0
    assert {t.get("k"): t.get("v") for t in way.findall("tag")} == {"building": "yes", "source": "survey test"}
    refs = [nd.get("ref") for nd in way.findall("nd")]
    assert len(refs) == 5 and refs[0] == refs[-1]
    assert all(int(n.get("id")) < 0 for n in tree.findall("create/node"))
    # a moved building is a modify of its existing nodes: same ids, their versions and tags
    modified = tree.findall("modify/node")
    assert [(n.get("id"), n.get("version")) for n in modified] == [("4096", "3"), ("4097", "1")]
    assert modified[0].find("tag").attrib == {"k": "entrance", "v": "yes"}
    assert tree.find("modify/way") is None
    with pytest.raises(ValueError):
        build_osc([], [OsmNode(4096, None, 124.1, 13.1)])


def test_osc_problems_catches_bad_files(tmp_path):
    (tmp_path / "a.osc").write_text("<osm/>")
    assert osc_problems(tmp_path / "a.osc")
    (tmp_path / "b.osc").write_text("<osmChange version='0.6'><create><way id='-1' version='0'><nd ref='-5'/></way></create></osmChange>")
    assert any("undefined" in p or "closed" in p for p in osc_problems(tmp_path / "b.osc"))
    (tmp_path / "c.osc").write_text("not xml <")
    assert osc_problems(tmp_path / "c.osc")[0].startswith("not XML")
    (tmp_path / "d.osc").write_text("<osmChange version='0.6'><modify><node id='5' version='0' lat='1' lon='1'/></modify></osmChange>")
    assert any("without an OSM id and version" in p for p in osc_problems(tmp_path / "d.osc"))


def test_outputs(virac_scene, tmp_path):
    truth, existing, _, _ = perturbed(virac_scene, seed=1)
    prob = rasterize_map(truth.geoms, *truth.shape)[..., 0]
    changes, summary = map_update(existing, prob, tmp_path, source="geolabel test")
    assert sum(summary["counts"].values()) == len(changes)
    frame = gpd.read_file(tmp_path / "changes.geojson")
    assert frame.crs.to_epsg() == 4326 and set(frame.status) <= {"new", "missing", "shifted", "unchanged"}
    assert frame.confidence.between(0, 1).all()
    assert osc_problems(tmp_path / "changes.osc") == []
    assert json.loads((tmp_path / "summary.json").read_text())["counts"] == summary["counts"]
    with Image.open(tmp_path / "preview.png") as png:
        assert png.mode == "RGB" and png.size[0] > 100


def test_mapupdate_command_with_probabilities(virac, virac_scene, tmp_path, capsys):
    image, labels = virac
    prob = rasterize_map(virac_scene.geoms, *virac_scene.shape)[..., 0]
    path = tmp_path / "probabilities.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=prob.shape[1], height=prob.shape[0], count=2, dtype="float32",
        crs=virac_scene.crs, transform=virac_scene.transform,
    ) as dst:
        dst.write(np.stack([1 - prob, prob]).astype("float32"))
    out = tmp_path / "out"
    main(["mapupdate", str(image), "--osm", str(labels), "--probabilities", str(path), "-o", str(out)])
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["unchanged"] > 0.8 * sum(counts.values())
    for name in ("changes.geojson", "changes.osc", "summary.json", "preview.png"):
        assert (out / name).is_file()


def test_mapupdate_command_needs_one_source(virac, tmp_path, capsys):
    image, labels = virac
    with pytest.raises(SystemExit) as exit_:
        main(["mapupdate", str(image), "--osm", str(labels), "-o", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "--model/--probabilities" in capsys.readouterr().err


def test_mapupdate_command_with_an_align_update_model(virac, tmp_path, capsys):
    from geolabel.models.align_update import AlignUpdateNet

    image, labels = virac
    model = AlignUpdateNet(image_base=4, map_base=4, depth=3)
    model([np.zeros((1, 32, 32, 3), "float32"), np.zeros((1, 32, 32, 3), "float32")])
    model.save(tmp_path / "au.keras")
    out = tmp_path / "out"
    main(["mapupdate", str(image), "--osm", str(labels), "--model", str(tmp_path / "au.keras"), "-o", str(out)])
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == counts and sum(counts.values()) > 0
    assert osc_problems(out / "changes.osc") == []


def test_a_footprint_snapping_off_itself_is_not_a_shift(virac_scene):
    """A mapped footprint with nothing under it whose best fit nearby is a real building further
    than its own size away is no misregistered outline: it is `missing`, never `shifted` onto that
    building (the shift would not keep `min_shift_overlap` of the mapped footprint)."""
    from geolabel.mapupdate import DiffParams

    truth = within_image(virac_scene, margin=16)
    prob = rasterize_map(truth.geoms, *truth.shape)[..., 0]
    tree = shapely.STRtree(truth.geoms)
    ghosts = []  # real buildings copied one own size + 2 px away, onto open ground
    for g in truth.geoms:
        size = max(g.bounds[2] - g.bounds[0], g.bounds[3] - g.bounds[1])
        step = float(np.ceil(size)) + 2.0
        if step >= DiffParams().max_shift - 1:
            continue
        for d in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)):
            ghost = shapely.transform(g, lambda p, d=d: p + np.array(d))
            if not len(tree.query(ghost.buffer(2.0), predicate="intersects")):
                ghosts.append(ghost)
                break
    assert len(ghosts) >= 2
    changes = compare(prob, np.array(ghosts, dtype=object), np.arange(len(ghosts)))
    statuses = [c.status for c in changes if c.source_id is not None]
    assert statuses == ["missing"] * len(ghosts)
