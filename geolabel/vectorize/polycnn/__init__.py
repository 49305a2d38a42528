"""PolyCNN (Girard & Tarabalka 2018) around the model of `geolabel.models.polycnn`.

- `geometry`: quadrilateral rings, their orientation, IoU and vertex-distance scores.
- `synthetic`: an unlimited artificial set of random quadrilaterals (decoder pre-training).
- `samples`: real scenes (imagery + building vectors) -> quadrilateral buildings -> jittered crops.
- `training`: `PolyCNNConfig` and the staged schedule behind `geolabel polycnn-train`.
- `inference`: objects of a class raster -> crops -> regressed georeferenced quadrilaterals
  (the "polycnn" polygoniser).

Vertices are (x, y) in crop units ([0, 1], x to the right, y down, pixel corners at integers
divided by the crop size), ordered clockwise on screen (positive shoelace area with y down);
the loss is invariant to which vertex comes first but not to the orientation.
"""
