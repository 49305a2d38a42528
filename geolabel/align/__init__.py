"""Learning from imperfect maps: synthetic misregistration of real polygons, training, alignment."""

from geolabel.align.apply import FACTORS, SMOOTH_PX, align_geometries, map_support, predict_field
from geolabel.align.data import Scene, load_scene, make_batch, rasterize_map, segmentation_target
from geolabel.align.fields import displace, random_smooth_field, sample_field, smooth_field, undisplace, vertex_errors

__all__ = [
    "FACTORS",
    "SMOOTH_PX",
    "Scene",
    "align_geometries",
    "displace",
    "load_scene",
    "make_batch",
    "map_support",
    "predict_field",
    "random_smooth_field",
    "rasterize_map",
    "sample_field",
    "segmentation_target",
    "smooth_field",
    "undisplace",
    "vertex_errors",
]
