"""TFX pipelines."""
