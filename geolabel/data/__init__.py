"""Data layer: raster I/O, fetching, rasterising labels and chipping them for training."""
