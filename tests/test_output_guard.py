"""The one output-path guard (`geolabel.outputs.output_path`) behind every command: bad output places are
refused with one line naming them (exit 2), inputs are never overwritten, a killed run's temporaries are
cleaned and a failed run leaves no empty folder behind."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from rasterio.warp import transform_bounds

from geolabel.atomic import temporary_prefix
from geolabel.cli import main
from geolabel.data.raster import RasterWriter, open_raster

UNWRITABLE = Path("/sys/geolabel-test")  # sysfs: no one, root included, may create anything there


def run(args: list[str], capsys) -> tuple[int, str]:
    """Run `geolabel ARGS`; (exit code, stderr)."""
    capsys.readouterr()
    try:
        main([os.fspath(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bbox(image: Path) -> str:
    with open_raster(image) as src:
        return ",".join(f"{v:.7f}" for v in transform_bounds(src.crs, "EPSG:4326", *src.bounds))


COMMANDS = {  # command -> its arguments given the scene and an output folder
    "fetch": lambda s, out: ["fetch", "--bbox", bbox(s["image"]), "--imagery", s["image"], "--labels", s["labels"], "-o", out],
    "train": lambda s, out: ["train", "--train", s["image"].parent, "--out", out],
    "predict": lambda s, out: ["predict", s["model"], s["image"], "-o", out],
    "evaluate": lambda s, out: ["evaluate", s["classes"], s["labels"], "-o", out],
    "align": lambda s, out: ["align", s["image"], s["labels"], "--model", s["aligner"], "-o", out / "aligned.gpkg"],
    "mapupdate": lambda s, out: ["mapupdate", s["image"], "--osm", s["labels"], "--probabilities", s["classes"], "-o", out],
    "export": lambda s, out: ["export", s["model"], "--out", out, "--version", "1"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unwritable_output_is_one_line_naming_it(command, austin_scene, capsys):
    code, err = run(COMMANDS[command](austin_scene, UNWRITABLE / "out"), capsys)
    assert code == 2
    assert err.startswith(f"Error: {UNWRITABLE}/out") and "cannot be created" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["predict", "evaluate", "mapupdate"])
def test_a_file_where_the_output_folder_goes_is_refused(command, austin_scene, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("someone's notes")
    code, err = run(COMMANDS[command](austin_scene, taken), capsys)
    assert code == 2 and err.strip() == f"Error: {taken}: is a file; {command} writes a folder of outputs here"
    assert taken.read_text() == "someone's notes"


def test_predict_never_replaces_its_own_input(austin_scene, tmp_path, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    own = out / "classes.tif"
    own.write_bytes(austin_scene["image"].read_bytes())
    code, err = run(["predict", austin_scene["model"], own, "-o", out], capsys)
    assert code == 2 and f"holds the input {own}" in err
    assert digest(own) == digest(austin_scene["image"])


def test_align_never_writes_over_its_input_labels(austin_scene, tmp_path, capsys):
    labels = tmp_path / "labels.geojson"
    labels.write_bytes(austin_scene["labels"].read_bytes())
    code, err = run(["align", austin_scene["image"], labels, "--model", austin_scene["aligner"], "-o", labels], capsys)
    assert code == 2 and f"is the input {labels}" in err
    assert digest(labels) == digest(austin_scene["labels"])


def test_a_folder_of_other_files_is_not_taken_over(austin_scene, tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.md").write_text("draft")
    code, err = run(COMMANDS["evaluate"](austin_scene, folder), capsys)
    assert code == 2 and "is a folder of other files (chapter1.md), not evaluate's outputs" in err
    assert sorted(p.name for p in folder.iterdir()) == ["chapter1.md"]


def test_a_killed_predict_leaves_temporaries_the_next_run_removes(austin_scene, tmp_path, capsys):
    out = tmp_path / "pred"
    with open_raster(austin_scene["image"]) as src:
        grid = {"width": src.width, "height": src.height, "crs": src.crs, "transform": src.transform}
    # what a predict killed while writing leaves: its staging rasters, hidden beside the outputs
    for name in ("classes.tif", "probabilities.tif"):
        killed = RasterWriter(out / name, count=1, dtype="uint8", **grid)
        killed.__enter__()
        killed._dst.close()  # the process dies here: no __exit__, so the stage file stays
    (out / ".probabilities.tif.k3j2h1g0.stage.tif").write_bytes(b"left by an older version")
    stale = sorted(p.name for p in out.iterdir())
    assert len(stale) == 3 and all(name.endswith(".stage.tif") and name.startswith(".") for name in stale)
    staging = Path(tempfile.mkdtemp(prefix=temporary_prefix("resample"), dir=out))  # a killed resampled predict's grid
    (staging / "input.vrt").write_text("<VRTDataset/>")
    code, err = run(["predict", austin_scene["model"], austin_scene["image"], "-o", out, "--window", "128"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert (out / "classes.tif").is_file() and (out / "probabilities.tif").is_file()


def test_failed_evaluate_and_fetch_leave_no_empty_folder(austin_scene, tmp_path, capsys):
    out = tmp_path / "new" / "report"
    code, err = run(["evaluate", austin_scene["classes"], austin_scene["truncated"], "-o", out], capsys)
    assert code == 2 and "truncated.tif" in err
    assert not (tmp_path / "new").exists()
    elsewhere = "-97.0,30.0,-96.99,30.01"  # near Austin, not on the crop
    code, err = run(["fetch", "--bbox", elsewhere, "--imagery", austin_scene["image"], "--labels", austin_scene["labels"],
                     "-o", out], capsys)
    assert code == 2 and "does not overlap the area of interest" in err
    assert not (tmp_path / "new").exists()
