"""`RunInputs`: what a run expects of its input, read once from its folder."""

from __future__ import annotations

import json
import shutil

from geolabel.data.imagery import InputScaling
from geolabel.predict.run_inputs import RunInputs
from geolabel.pretrained import resolve_run


def test_shipped_model_user_run_and_bare_file(tmp_path):
    shipped = RunInputs.of("pretrained")
    assert shipped.scene_norm and not shipped.scene_contrast  # its config.yaml
    assert shipped.card is not None and shipped.card.resolution_m > 0 and shipped.scaling is None

    run = tmp_path / "run"  # a user's run of 16-bit imagery: no card, its input.json
    shutil.copytree(resolve_run("pretrained"), run)
    (run / "MODEL_CARD.md").unlink()
    scaling = InputScaling((1, 1, 1), ((120.0, 1800.0),))
    (run / "input.json").write_text(json.dumps(scaling.to_dict()))
    user = RunInputs.of(run)
    assert user.card is None and user.scaling == scaling and user.scene_norm == shipped.scene_norm

    assert RunInputs.of(run / "model.keras") == RunInputs() == RunInputs.of(None)  # a bare model file
