"""Bad inputs to the commands that pair imagery with vectors or models are one line naming the input
(exit 2), not a traceback: a truncated GeoTIFF, a raster without a CRS, a model of the wrong kind."""

from __future__ import annotations

import pytest

from tests.test_output_guard import run

COMMANDS = {  # command -> its arguments given the scene, an image and an output folder
    "align": lambda s, image, out: ["align", image, s["labels"], "--model", s["aligner"], "-o", out / "aligned.gpkg"],
    "mapupdate": lambda s, image, out: ["mapupdate", image, "--osm", s["labels"], "--probabilities", s["classes"], "-o", out],
    "evaluate": lambda s, image, out: ["evaluate", image, s["labels"], "-o", out],  # the image as the predicted classes
}
FAULTS = {"truncated": "cannot be read: truncated or damaged?", "no_crs": "has no CRS"}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_raster_is_one_line_naming_it(command, fault, austin_scene, tmp_path, capsys):
    image = austin_scene[fault]
    code, err = run(COMMANDS[command](austin_scene, image, tmp_path / "out"), capsys)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"Error: {image}: {FAULTS[fault]}") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_align_refuses_a_segmentation_model(austin_scene, tmp_path, capsys):
    code, err = run(["align", austin_scene["image"], austin_scene["labels"], "--model", austin_scene["model"],
                     "-o", tmp_path / "aligned.gpkg"], capsys)
    assert code == 2
    assert err.strip() == (f"Error: {austin_scene['model']}: is a Functional model, not an alignment model "
                           "(a MultiscaleAligner from `geolabel align-train`, or an AlignUpdateNet)")
    assert not (tmp_path / "aligned.gpkg").exists()
