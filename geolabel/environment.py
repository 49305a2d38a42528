"""What geolabel runs on: library versions, Keras backend, devices."""

from __future__ import annotations

import importlib
import platform

import geolabel

_PACKAGES = {
    "tensorflow": "tensorflow",
    "keras": "keras",
    "tfx": "tfx.version",
    "apache-beam": "apache_beam",
    "ml-metadata": "ml_metadata",
    "rasterio": "rasterio",
    "geopandas": "geopandas",
    "shapely": "shapely",
    "pyproj": "pyproj",
    "osmnx": "osmnx",
    "numpy": "numpy",
    "click": "click",
}


def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # a broken optional install must not break `info`
        return f"not available ({type(err).__name__}: {err})".splitlines()[0]
    return str(getattr(module, "__version__", getattr(module, "VERSION", "unknown")))


def environment_report() -> dict[str, str]:
    """Versions of the stack, GDAL/PROJ, Keras backend and devices, as name -> text."""
    report = {"geolabel": geolabel.__version__, "python": platform.python_version(), "platform": platform.platform()}
    # TFX before anything that imports TFDV (see README: TFX install notes).
    for name, module in sorted(_PACKAGES.items(), key=lambda kv: kv[0] != "tfx"):
        report[name] = _version(module)
    import rasterio

    report["gdal"] = rasterio.__gdal_version__
    report["proj"] = rasterio.__proj_version__
    import keras

    report["keras backend"] = keras.backend.backend()
    try:
        import tensorflow as tf

        devices = [f"{d.device_type}:{d.name.split(':')[-1]}" for d in tf.config.list_physical_devices()]
        report["devices"] = ", ".join(devices)
    except Exception as err:
        report["devices"] = f"unknown ({err})"
    return report
