"""Load any geolabel model: the one loader behind predict, train --init, export, serve and mapupdate."""

from __future__ import annotations

import os

import keras

from geolabel.errors import InputError
from geolabel.pretrained import resolve_run


def load_model(path: str | os.PathLike) -> keras.Model:
    """The Keras model of a run folder, a `.keras` file, or a shipped model (`pretrained[:NAME]`).

    Every model family's custom classes are registered first, so a segmentation run, a PolyCNN,
    an alignment network or a refinement RNN all load through here; foreign files raise InputError.
    """
    import geolabel.models.align_update  # noqa: F401  (registers their serialisable classes)
    import geolabel.models.polycnn  # noqa: F401
    import geolabel.models.rnn_refine  # noqa: F401

    file = resolve_run(path)
    if file.is_dir():
        file = file / "model.keras"
        if not file.is_file():
            raise InputError(path, "is a folder without model.keras (not a finished geolabel run folder)")
    elif not file.is_file():
        raise InputError(path, "no such model (give a run folder, a .keras file or 'pretrained')")
    if file.suffix != ".keras":
        raise InputError(path, "expected a run folder or a .keras file")
    try:
        return keras.models.load_model(file, compile=False)
    except Exception as err:  # Keras raises many exception types for foreign files
        raise InputError(path, f"not a loadable Keras model ({str(err).splitlines()[0][:200]})") from err
