"""Map update: what to change in OSM, from predictions compared with the existing map."""

from geolabel.mapupdate.diff import STATUSES, Change, DiffParams, compare, counts
from geolabel.mapupdate.osc import build_osc, osc_problems, write_osc
from geolabel.mapupdate.update import building_probability, map_update, write_outputs

__all__ = [
    "STATUSES",
    "Change",
    "DiffParams",
    "build_osc",
    "building_probability",
    "compare",
    "counts",
    "map_update",
    "osc_problems",
    "write_osc",
    "write_outputs",
]
