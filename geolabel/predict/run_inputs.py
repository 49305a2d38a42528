"""What a trained run expects of the pixels it is given, read once from its folder.

A run folder records how its training imagery became model inputs: per-scene colour
standardisation (`config.yaml`: `scene_norm`, `scene_contrast`), the band choice and 16-bit
stretch of its datasets (`input.json`), and, for a shipped model, the ground resolution it was
trained at (`MODEL_CARD.md`). Every command that feeds a run new imagery (predict, mapupdate,
the demo) reads them here, so they cannot disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from geolabel.data.imagery import InputScaling
from geolabel.pretrained import ModelCard, model_card, resolve_run


@dataclass(frozen=True)
class RunInputs:
    """The input expectations of one model (the defaults: a bare model file, pixels as they are).

    Attributes:
        scene_norm: standardise each scene's colours to the reference first.
        scene_contrast: with `scene_norm`, also match band standard deviations.
        scaling: band choice and 16-bit stretch of the training imagery (None: 8-bit as read).
        card: the model card of a shipped model (resolution, licence, attribution), else None.
    """

    scene_norm: bool = False
    scene_contrast: bool = True
    scaling: InputScaling | None = None
    card: ModelCard | None = None

    @classmethod
    def of(cls, model: str | os.PathLike | None) -> RunInputs:
        """Read from MODEL (a run folder, a `.keras` file or `pretrained[:NAME]`); defaults without one."""
        if model is None:
            return cls()
        from geolabel.train.trainer import load_run_config, load_run_input

        folder = resolve_run(model)
        norm = (False, True)
        if folder.is_dir() and (folder / "config.yaml").is_file():
            config = load_run_config(folder)
            norm = (config.scene_norm, config.scene_contrast)
        scaling = load_run_input(folder) if folder.is_dir() else None
        return cls(*norm, scaling=scaling, card=model_card(model))
