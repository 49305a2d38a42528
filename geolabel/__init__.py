"""geolabel: classify aerial and satellite imagery pixel by pixel, and turn it into maps."""

import os

# TensorFlow is the default backend; models use only keras/keras.ops so JAX works too.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
