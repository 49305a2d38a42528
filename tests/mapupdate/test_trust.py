"""Map updates a mapper can trust, on real data: changes only where there is imagery, inputs
that do not overlap refused, OSM XML read with ids and versions, uploadable osmChange checked
with an independent reader (pyosmium), a confidence threshold between upload and review, and
the optional alignment first."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import osmium
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer

from geolabel.align.data import Scene, rasterize_map, within_image
from geolabel.align.fields import to_pixels
from geolabel.cli import main
from geolabel.data.osm import read_osm_buildings
from geolabel.mapupdate import DiffParams, map_update, osc_problems
from geolabel.mapupdate.update import map_update_files

BAVARIA = "bavaria-10.068_48.135_10.071_48.137.osm"


def write_raster(path: Path, bands: np.ndarray, crs, transform: Affine, nodata: float | None = None) -> Path:
    """Write (bands, H, W) as a GeoTIFF."""
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
                       dtype=bands.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(bands)
    return path


def write_probability(path: Path, prob: np.ndarray, crs, transform: Affine) -> Path:
    """A `probabilities.tif` (background, building) of a building probability (H, W)."""
    return write_raster(path, np.stack([1 - prob, prob]).astype("float32"), crs, transform)


@pytest.fixture(scope="session")
def austin(shared_data) -> dict:
    """Inria Austin: real RGB (3, H, W), its real building mask (H, W) 0/1 and the buildings of the
    mask as polygons (image CRS), with its CRS and transform."""
    folder = shared_data / "inria-austin"
    with rasterio.open(folder / "image.tif") as src:
        image, crs, transform = src.read(), src.crs, src.transform
    with rasterio.open(folder / "buildings-mask.tif") as src:
        mask = (src.read(1) > 0).astype(np.uint8)
    polygons = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(mask, mask=mask > 0, transform=transform)]
    return {"image": image, "mask": mask, "crs": crs, "transform": transform,
            "buildings": gpd.GeoDataFrame({"osm_id": np.arange(len(polygons)) + 1}, geometry=polygons, crs=crs)}


def pixel_geometries(path: Path, crs, transform: Affine) -> gpd.GeoDataFrame:
    """changes.geojson with its geometries in the pixel coordinates of the image grid."""
    frame = gpd.read_file(path).to_crs(crs)
    return frame.set_geometry(list(to_pixels(np.asarray(frame.geometry.values, dtype=object), transform)), crs=None)


def osm_objects(path: Path) -> dict[str, list]:
    """Nodes and ways of an OSM file as pyosmium reads them: (id, version, lon, lat, tags) and
    (id, version, node refs, tags)."""
    out = {"nodes": [], "ways": [], "relations": []}
    for obj in osmium.FileProcessor(str(path)):
        tags = {t.k: t.v for t in obj.tags}
        if obj.is_node():
            out["nodes"].append((obj.id, obj.version, obj.location.lon, obj.location.lat, tags))
        elif obj.is_way():
            out["ways"].append((obj.id, obj.version, [n.ref for n in obj.nodes], tags))
        else:
            out["relations"].append(obj.id)
    return out


# ---------------------------------------------------------------- 1. changes only where there is imagery


def test_all_nodata_raster_gives_an_empty_diff(austin, tmp_path):
    image = write_raster(tmp_path / "nodata.tif", np.zeros_like(austin["image"]), austin["crs"], austin["transform"], 0)
    # a model that calls everything a building, over a map of the real buildings
    prob = write_probability(tmp_path / "p.tif", np.ones(austin["mask"].shape), austin["crs"], austin["transform"])
    austin["buildings"].to_crs("EPSG:4326").to_file(tmp_path / "map.geojson")
    summary = map_update_files(image, tmp_path / "map.geojson", tmp_path / "out", probabilities_path=prob)
    assert summary["counts"] == {"new": 0, "missing": 0, "shifted": 0, "unchanged": 0}
    assert len(gpd.read_file(tmp_path / "out" / "changes.geojson")) == 0
    assert osm_objects(tmp_path / "out" / "changes.osc") == {"nodes": [], "ways": [], "relations": []}


def test_no_change_lies_over_nodata(austin, tmp_path):
    h, w = austin["mask"].shape
    pixels = austin["image"].copy()
    pixels[:, :, : w // 2] = 0  # no imagery on the left half
    image = write_raster(tmp_path / "half.tif", pixels, austin["crs"], austin["transform"], 0)
    # the real buildings predicted everywhere, nodata half included
    prob = write_probability(tmp_path / "p.tif", austin["mask"].astype(float), austin["crs"], austin["transform"])
    buildings = austin["buildings"]
    centres = to_pixels(np.asarray(buildings.centroid.values, dtype=object), austin["transform"])
    right = np.flatnonzero(shapely.get_x(centres) > w // 2 + 20)
    removed = np.random.default_rng(0).choice(right, 8, replace=False)
    kept = np.setdiff1d(right, removed)  # the map: right-half buildings less 8; nothing on the left
    buildings.iloc[kept].to_crs("EPSG:4326").to_file(tmp_path / "map.geojson")
    summary = map_update_files(image, tmp_path / "map.geojson", tmp_path / "out", probabilities_path=prob)
    changes = pixel_geometries(tmp_path / "out" / "changes.geojson", austin["crs"], austin["transform"])
    left = shapely.box(-10, -10, w // 2, h + 10)
    over_nodata = shapely.area(shapely.intersection(changes.geometry.values, left)) / shapely.area(changes.geometry.values)
    new = changes.status.to_numpy() == "new"
    assert summary["counts"]["new"] >= 6 and new.sum() == summary["counts"]["new"]
    assert (over_nodata[new] < 0.02).all()  # new buildings only on imagery
    assert (over_nodata[~new] <= 0.5).all()  # existing ones judged only when mostly on imagery
    truth = to_pixels(np.asarray(buildings.geometry.values[removed], dtype=object), austin["transform"])
    found = [any(g.intersection(r).area > 0.5 * r.area for g in changes.geometry[new]) for r in truth]
    assert sum(found) >= 6


# ---------------------------------------------------------------- 2. inputs that do not overlap


@pytest.mark.parametrize("case", ["elsewhere", "wrong-crs"])
def test_inputs_that_do_not_overlap_are_one_line_errors(case, austin, shared_data, tmp_path, capsys):
    prob = write_probability(tmp_path / "p.tif", austin["mask"].astype(float), austin["crs"], austin["transform"])
    if case == "elsewhere":  # real buildings of the Philippines over an image of Texas
        osm = shared_data / "oam-osm" / "virac-ph" / "osm-buildings.geojson"
    else:  # UTM coordinates in a file that says EPSG:4326
        osm = tmp_path / "map.gpkg"
        austin["buildings"].set_crs("EPSG:4326", allow_override=True).to_file(osm)
    image = shared_data / "inria-austin" / "image.tif"
    with pytest.raises(SystemExit) as exit_:
        main(["mapupdate", str(image), "--osm", str(osm), "--probabilities", str(prob), "-o", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(osm) in err and str(image) in err
    assert not (tmp_path / "out" / "changes.osc").exists()


# ---------------------------------------------------------------- 3. OSM XML


@pytest.mark.parametrize("name", [BAVARIA, "west-oakland.osm.bz2"])
def test_osm_xml_buildings_as_pyosmium_reads_them(name, shared_data):
    path = shared_data / "osm-extracts" / name
    theirs = osm_objects(path)
    nodes = {n[0]: n for n in theirs["nodes"]}
    expected = {f"way/{wid}": (version, refs) for wid, version, refs, tags in theirs["ways"]
                if tags.get("building", "no") != "no" and len(refs) >= 4 and refs[0] == refs[-1]
                and all(r in nodes for r in refs)}
    ours = {b.key: b for b in read_osm_buildings(path)}
    assert len(ours) >= 20 and set(ours) == set(expected)
    for key, building in ours.items():
        version, refs = expected[key]
        assert building.version == version and building.geometry.is_valid and building.geometry.area > 0
        assert [n.id for n in building.nodes] == list(dict.fromkeys(refs))
        assert all((n.version, n.lon, n.lat) == (nodes[n.id][1], pytest.approx(nodes[n.id][2]), pytest.approx(nodes[n.id][3]))
                   for n in building.nodes)


def bavaria_scene(shared_data, tmp_path: Path, austin: dict) -> dict:
    """Bavaria's real OSM buildings as the map, real pixels (Inria's, georeferenced over the
    village at ~0.3 m) as the image, and a probability of the true buildings where 3 buildings
    that share no node and 1 that does lie (4, -3) px from where the map has them, and 2
    buildings are missing from the map file."""
    source = shared_data / "osm-extracts" / BAVARIA
    buildings = read_osm_buildings(source)
    wgs = gpd.GeoSeries([b.geometry for b in buildings], crs="EPSG:4326")
    merc = wgs.to_crs("EPSG:3857")
    cx, cy = shapely.get_coordinates(shapely.box(*merc.total_bounds).centroid)[0]
    px = 0.45  # Web Mercator metres: about 0.3 m on the ground at 48 degrees
    transform = Affine(px, 0, cx - 500 * px, 0, -px, cy + 500 * px)
    geoms = to_pixels(np.asarray(merc.values, dtype=object), transform)
    shift = np.array([4.0, -3.0])
    moved = shapely.transform(geoms, lambda p: p + shift)
    clear = [k for k in range(len(geoms))
             if not any(moved[k].buffer(3).intersects(geoms[j]) for j in range(len(geoms)) if j != k)]
    by_area = sorted(clear, key=lambda k: -geoms[k].area)
    shifted = [k for k in by_area if not buildings[k].shared][:3] + [k for k in by_area if buildings[k].shared][:1]
    removed = [k for k in by_area if k not in shifted][:2]
    truth = np.array([moved[k] if k in shifted else geoms[k] for k in range(len(geoms))], dtype=object)
    prob = rasterize_map(truth, 1000, 1000)[..., 0]
    tree = ET.parse(source)
    for way in list(tree.getroot().iter("way")):
        if f"way/{way.get('id')}" in {buildings[k].key for k in removed}:
            tree.getroot().remove(way)
    tree.write(tmp_path / "map.osm", encoding="utf-8", xml_declaration=True)
    return {
        "image": write_raster(tmp_path / "image.tif", austin["image"], "EPSG:3857", transform),
        "prob": write_probability(tmp_path / "p.tif", prob, "EPSG:3857", transform),
        "map": tmp_path / "map.osm", "buildings": buildings, "shifted": shifted, "removed": removed,
        "truth": truth, "transform": transform, "shift": shift * np.array([transform.a, transform.e]),
    }


def test_osm_xml_shift_is_a_modify_of_the_existing_nodes(shared_data, austin, tmp_path):
    case = bavaria_scene(shared_data, tmp_path, austin)
    buildings, shifted = case["buildings"], case["shifted"]
    summary = map_update_files(case["image"], case["map"], tmp_path / "out", probabilities_path=case["prob"])
    osc = tmp_path / "out" / "changes.osc"
    assert osc_problems(osc) == []
    change = osm_objects(osc)
    # shifted buildings that share no node: their nodes modified in place, nothing else existing touched
    uploadable = [buildings[k] for k in shifted if not buildings[k].shared]
    expected = {n.id: n for b in uploadable for n in b.nodes}
    modified = [n for n in change["nodes"] if n[0] > 0]
    assert sorted(n[0] for n in modified) == sorted(expected) and len(uploadable) == 3
    assert not [w for w in change["ways"] if w[0] > 0] and not change["relations"]
    to_merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    for nid, version, lon, lat, tags in modified:
        node = expected[nid]
        assert version == node.version and version > 0 and tags == node.tags
        x0, y0 = to_merc.transform(node.lon, node.lat)
        x1, y1 = to_merc.transform(lon, lat)
        assert (x1 - x0, y1 - y0) == (pytest.approx(case["shift"][0], abs=0.01), pytest.approx(case["shift"][1], abs=0.01))
    # the buildings missing from the map come back as created ways: negative ids, building=yes + source
    created = [w for w in change["ways"] if w[0] < 0]
    assert len(created) == 2 and all(w[3] == {"building": "yes", "source": "geolabel"} for w in created)
    assert all(w[2][0] == w[2][-1] and all(r < 0 for r in w[2]) for w in created)
    removed = [case["truth"][k] for k in case["removed"]]
    frame = pixel_geometries(tmp_path / "out" / "changes.geojson", "EPSG:3857", case["transform"])
    new = frame[frame.status == "new"].geometry
    assert all(any(g.intersection(r).area > 0.8 * r.area for g in new) for r in removed)
    # the shifted building sharing a node with its neighbour is for review in changes.osm
    review = osm_objects(tmp_path / "out" / "changes.osm")
    shared = [buildings[k].key for k in shifted if buildings[k].shared]
    assert [w[3]["geolabel:ref"] for w in review["ways"]] == shared and all(w[0] < 0 for w in review["ways"])
    assert summary["osc"] == {"new": 2, "shifted": 3, "nodes_moved": len(expected)}
    assert summary["shifted_not_uploadable"] == {"a node is shared with another way": 1}


def test_osm_xml_without_versions_goes_to_review(shared_data, austin, tmp_path):
    case = bavaria_scene(shared_data, tmp_path, austin)
    tree = ET.parse(case["map"])  # as Overpass `out geom` writes it: positions on <nd>, no metadata
    root = tree.getroot()
    nodes = {n.get("id"): n for n in root.findall("node")}
    for way in root.findall("way"):
        for nd in way.findall("nd"):
            nd.set("lat", nodes[nd.get("ref")].get("lat"))
            nd.set("lon", nodes[nd.get("ref")].get("lon"))
    for el in list(root):
        if el.tag == "node":
            root.remove(el)
        el.attrib.pop("version", None)
    tree.write(tmp_path / "geom.osm", encoding="utf-8", xml_declaration=True)
    summary = map_update_files(case["image"], tmp_path / "geom.osm", tmp_path / "out", probabilities_path=case["prob"])
    assert summary["osc"]["shifted"] == 0 and summary["osc"]["new"] == 2
    assert not [n for n in osm_objects(tmp_path / "out" / "changes.osc")["nodes"] if n[0] > 0]
    review = osm_objects(tmp_path / "out" / "changes.osm")
    assert len(review["ways"]) == len(case["shifted"]) and all(o[0] < 0 for o in review["nodes"] + review["ways"])
    assert sum(summary["shifted_not_uploadable"].values()) == len(case["shifted"])
    assert ET.parse(tmp_path / "out" / "changes.osm").getroot().get("upload") == "false"


def test_vector_map_shifts_go_to_a_josm_review_file(virac_scene, tmp_path):
    from tests.mapupdate.test_mapupdate import perturbed

    truth, existing, _, shifted_ids = perturbed(virac_scene)
    prob = rasterize_map(truth.geoms, *truth.shape)[..., 0]
    changes, summary = map_update(existing, prob, tmp_path, source="geolabel test")
    flagged = {str(c.source_id) for c in changes if c.status == "shifted"}
    assert len(flagged) >= 4 and summary["osc"]["shifted"] == 0
    assert not [o for o in osm_objects(tmp_path / "changes.osc")["nodes"] if o[0] > 0]
    review = osm_objects(tmp_path / "changes.osm")
    assert {w[3]["geolabel:ref"] for w in review["ways"]} == flagged
    assert all(w[0] < 0 and w[2][0] == w[2][-1] for w in review["ways"])
    frame = gpd.read_file(tmp_path / "changes.geojson")
    assert set(frame[frame.status == "shifted"].output) == {"changes.osm"}


# ---------------------------------------------------------------- 4. confidence threshold


def test_min_confidence_splits_upload_from_review(virac, virac_scene, tmp_path, capsys):
    from tests.mapupdate.test_mapupdate import perturbed

    truth, existing, removed, _ = perturbed(virac_scene, seed=2)
    prob = 0.9 * rasterize_map(truth.geoms, *truth.shape)[..., 0]  # every change at confidence 0.9
    for name, threshold in (("low", 0.85), ("high", 0.95)):
        _, summary = map_update(existing, prob, tmp_path / name, DiffParams(min_confidence=threshold))
        frame = gpd.read_file(tmp_path / name / "changes.geojson")
        assert summary["min_confidence"] == threshold and frame.confidence.between(0, 1).all()
        new = frame[frame.status == "new"]
        assert len(new) >= 4 and (new.confidence.round(2) == 0.9).all()
        if name == "low":
            assert set(new.output) == {"changes.osc"} and summary["osc"]["new"] == len(new)
        else:
            assert set(new.output) == {"review"} and summary["osc"]["new"] == 0
            assert summary["held_back_for_review"]["new"] == len(new)
            assert not osm_objects(tmp_path / name / "changes.osc")["ways"]
        assert set(frame[frame.status == "missing"].output) <= {"review"}
    image, labels = virac
    path = write_probability(tmp_path / "p.tif", rasterize_map(virac_scene.geoms, *virac_scene.shape)[..., 0],
                             virac_scene.crs, virac_scene.transform)
    main(["mapupdate", str(image), "--osm", str(labels), "--probabilities", str(path), "-o", str(tmp_path / "cli"),
          "--min-confidence", "0.7"])
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["min_confidence"] == 0.7


# ---------------------------------------------------------------- 5. alignment first


def test_alignment_first_keeps_a_misregistered_map_unchanged(virac_scene, tmp_path):
    from geolabel.align.apply import align_geometries
    from tests.align.test_apply import constant_field_aligner

    truth = within_image(virac_scene, margin=16)
    lacking = np.argsort(-shapely.area(truth.geoms))[:3]  # the 3 largest buildings are missing from the map
    keep = ~np.isin(np.arange(len(truth.geoms)), lacking)
    offset = np.array([3.0, -2.0])  # the whole map is misregistered by (3, -2) px
    drawn = shapely.transform(truth.geoms[keep], lambda p: p + offset)
    existing = Scene(truth.image, truth.transform, truth.crs, drawn, truth.ids[keep])
    prob = rasterize_map(truth.geoms, *truth.shape)[..., 0]
    _, plain = map_update(existing, prob, tmp_path / "plain")
    assert plain["counts"]["shifted"] > 0.5 * len(drawn)
    aligned, _ = align_geometries(constant_field_aligner(*offset), truth.image, drawn, factors=(1,), tta=False, smooth=0.0)
    changes, summary = map_update(existing, prob, tmp_path / "aligned", aligned=aligned)
    assert summary["aligned"] and summary["counts"]["shifted"] == 0
    assert summary["counts"]["unchanged"] >= len(drawn) - 2
    # the buildings the map lacks are found, and given in the map's own (misregistered) frame
    new = [c.geometry for c in changes if c.status == "new"]
    for building in truth.geoms[lacking]:
        there = shapely.transform(building, lambda p: p + offset)
        best = max(new, key=lambda g: g.intersection(there).area)
        assert best.intersection(there).area > best.intersection(building).area


def test_mapupdate_command_with_align(virac, tmp_path, capsys):
    from geolabel.models.alignment import MultiscaleAligner

    image, labels = virac
    model = MultiscaleAligner(scales=(4, 2, 1), filters=(4, 4, 8))  # untrained: the identity
    model([np.zeros((1, 32, 32, 3), "float32"), np.zeros((1, 32, 32, 3), "float32")])
    model.save(tmp_path / "aligner.keras")
    with rasterio.open(image) as src:
        shape, crs, transform = (src.height, src.width), src.crs, src.transform
    scene_geoms = to_pixels(np.asarray(gpd.read_file(labels).to_crs(crs).geometry.values, dtype=object), transform)
    prob = write_probability(tmp_path / "p.tif", rasterize_map(scene_geoms, *shape)[..., 0], crs, transform)
    runs = {}
    for name, extra in (("plain", []), ("aligned", ["--align", str(tmp_path / "aligner.keras")])):
        main(["mapupdate", str(image), "--osm", str(labels), "--probabilities", str(prob), "-o", str(tmp_path / name), *extra])
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    assert runs["aligned"]["aligned"] and not runs["plain"]["aligned"]
    assert runs["aligned"]["counts"] == runs["plain"]["counts"]
