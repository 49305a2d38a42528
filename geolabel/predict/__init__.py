"""Prediction of any-size rasters: sliding windows, smooth blending, streaming COG output."""

from geolabel.predict.predictor import (
    KerasPredictor,
    PredictFn,
    PredictResult,
    keras_predict_fn,
    predict_raster,
    render_preview,
    tta_predict,
    TTA_TRANSFORMS,
    DEFAULT_TTA,
    write_preview,
)
from geolabel.predict.windows import (
    WindowPlan,
    blend_weights,
    fit_window,
    plan_windows,
    predict_in_tiles,
    window_geometry,
)

__all__ = [
    "KerasPredictor",
    "PredictFn",
    "PredictResult",
    "WindowPlan",
    "blend_weights",
    "fit_window",
    "keras_predict_fn",
    "plan_windows",
    "predict_in_tiles",
    "predict_raster",
    "render_preview",
    "tta_predict",
    "TTA_TRANSFORMS",
    "DEFAULT_TTA",
    "window_geometry",
    "write_preview",
]
