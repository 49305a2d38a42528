"""Models shipped inside the package, and the model cards that say what each one is for.

A shipped model is an ordinary run folder (`model.keras`, `config.yaml`, `metrics.json`)
under `geolabel/weights/NAME/`, plus `MODEL_CARD.md`: a human-readable card whose YAML front
matter (as on Hugging Face model cards) holds what the code needs: the ground resolution the
model was trained at, the range it tolerates, and the attribution its licences require.
Every command that takes a run folder also takes `pretrained` (or `pretrained:NAME`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from geolabel.errors import InputError

PRETRAINED = "pretrained"
DEFAULT_PRETRAINED = "buildings"
CARD_FILE = "MODEL_CARD.md"
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelCard:
    """What a model was trained on and for, read from the front matter of its MODEL_CARD.md."""

    name: str
    resolution_m: float
    """Ground pixel size (metres) of the imagery the model was trained on."""
    resolution_range_m: tuple[float, float]
    """Pixel sizes predicted as they are; inputs outside are resampled to `resolution_m`."""
    max_input_m: float
    """Coarsest input that can still be resampled usefully; coarser inputs are refused."""
    attribution: str
    """Credit line that must travel with the weights and with every output made from them."""
    license: str
    classes: tuple[str, ...] = ("background", "building")
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelCard:
        text = Path(path).read_text(encoding="utf-8")
        if not text.startswith("---\n") or "\n---" not in text[4:]:
            raise InputError(path, "a model card starts with YAML front matter between '---' lines")
        meta = yaml.safe_load(text[4:text.index("\n---", 4)]) or {}
        try:
            low, high = (float(v) for v in meta.pop("resolution_range_m"))
            return cls(name=str(meta.pop("name")), resolution_m=float(meta.pop("resolution_m")),
                       resolution_range_m=(low, high), max_input_m=float(meta.pop("max_input_m")),
                       attribution=str(meta.pop("attribution")), license=str(meta.pop("license")),
                       classes=tuple(meta.pop("classes", cls.classes)), extra=meta)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(path, f"model card front matter is missing or has a bad field ({err})") from None

    def resampling_factor(self, input_m: float, source: str) -> float:
        """Input pixel size / trained pixel size when the input must be resampled, else 1.

        Raises InputError (naming `source`) for inputs too coarse for the model to see buildings.
        """
        if not math.isfinite(input_m) or input_m <= 0:
            raise InputError(source, f"cannot tell its ground pixel size ({input_m} m)")
        if input_m > self.max_input_m:
            raise InputError(source, f"{input_m:.3g} m pixels are far outside what the {self.name} model was trained "
                                     f"for ({self.resolution_m:g} m; at most {self.max_input_m:g} m can be resampled)")
        low, high = self.resolution_range_m
        return 1.0 if low <= input_m <= high else input_m / self.resolution_m


def pretrained_names() -> list[str]:
    """Names of the models shipped in the package."""
    return sorted(p.parent.name for p in WEIGHTS_DIR.glob(f"*/{CARD_FILE}"))


def resolve_run(ref: str | os.PathLike) -> Path:
    """The folder of a model reference: `pretrained[:NAME]` -> the shipped run folder, else the path."""
    if not (isinstance(ref, str) and (ref == PRETRAINED or ref.startswith(PRETRAINED + ":"))):
        return Path(ref)
    name = str(ref).partition(":")[2] or DEFAULT_PRETRAINED
    folder = WEIGHTS_DIR / name
    if not (folder / "model.keras").is_file():
        raise InputError(str(ref), f"no shipped model of that name; shipped: {', '.join(pretrained_names()) or 'none'}")
    return folder


def model_card(run: str | os.PathLike) -> ModelCard | None:
    """The card of a run folder (shipped models have one), or None."""
    path = resolve_run(run)
    card = path / CARD_FILE if path.is_dir() else None
    return ModelCard.read(card) if card is not None and card.is_file() else None
