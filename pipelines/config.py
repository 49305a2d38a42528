"""The pipeline's configuration: one YAML file describes a whole fetch -> train -> push run.

Every section has defaults; a YAML file overrides them section by section (see
`pipelines/example.yaml` for a commented example). Unknown keys are an error that names
the section and the key.

Sections:
    name: pipeline name (also the TF Serving model name under `paths.serving`).
    classes: class names, background first (default background, building).
    pretrain: the plentiful, noisy source (AOI + imagery + OSM labels) -> pretraining examples.
    finetune: the small, clean source (AOI + imagery + a clean vector/raster label file).
    model: registry name and builder options of the network (`geolabel.models.MODELS`).
    pretrain_budget / finetune_budget: epochs, steps, batch size, learning rate per stage.
    thresholds: blessing rule (absolute IoU floor and the allowed regression).
    paths: where the pipeline root, ML Metadata store and serving directory live.
    beam_args: Apache Beam flags for the components that use Beam (in-process by default).
    kubeflow: container image and Dataflow settings for `geolabel pipeline compile`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geolabel import sample
from geolabel.config import load_config
from geolabel.errors import InputError

# Beam's DirectRunner, in this process, one worker: no Prism binary download, no subprocesses.
LOCAL_BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@dataclass
class SourceConfig:
    """One `geolabel fetch`: an area, an imagery source and a label source.

    Args:
        bbox: area of interest as [west, south, east, north] in EPSG:4326.
        aoi: area of interest as a GeoJSON/GeoPackage file (instead of bbox).
        place: area of interest as a place name geocoded by osmnx (instead of bbox).
        imagery: XYZ/TMS URL template with {z}/{x}/{y}, a local tile folder template (served
            on loopback during the fetch), or a local/remote GeoTIFF/COG.
        zoom: tile zoom level (tile servers only).
        labels: "osm" (Overpass), an OSM extract (.osm/.osm.bz2/.osm.pbf), a vector file, or a
            mask raster (.tif, non-zero = the first non-background class).
        imagery and labels may be `sample:REL` paths: files of the sample bundled with geolabel.
        overpass_url: Overpass endpoint used when labels is "osm".
        chip_size: training chip side in pixels.
        options: further keyword options passed unchanged to geolabel's fetch.
    """

    bbox: list[float] | None = None
    aoi: str | None = None
    place: str | None = None
    imagery: str | None = None
    zoom: int | None = None
    labels: str = "osm"
    overpass_url: str | None = None
    chip_size: int = 256
    options: dict[str, Any] = field(default_factory=dict)

    def check(self, section: str) -> None:
        """Raise InputError naming `section` when the source cannot be fetched."""
        given = [k for k in ("bbox", "aoi", "place") if getattr(self, k) is not None]
        if len(given) != 1:
            raise InputError(section, f"give exactly one of bbox, aoi, place (got {', '.join(given) or 'none'})")
        if self.bbox is not None:
            if len(self.bbox) != 4:
                raise InputError(f"{section}.bbox", "must be [west, south, east, north]")
            w, s, e, n = (float(v) for v in self.bbox)
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise InputError(f"{section}.bbox", f"{self.bbox} is not a valid EPSG:4326 box (west < east, south < north)")
        if not self.imagery:
            raise InputError(f"{section}.imagery", "an imagery source is required")
        sample.resolve(self.imagery)  # a `sample:` path must name a file of the bundled sample
        sample.resolve(self.labels)
        if self.chip_size <= 0 or self.chip_size % 16:
            raise InputError(f"{section}.chip_size", "must be a positive multiple of 16")


@dataclass
class ModelConfig:
    """The network: a name in `geolabel.models.MODELS` and its builder options."""

    name: str = "unet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BudgetConfig:
    """What one training stage may spend.

    Args:
        epochs: passes over the training split.
        steps_per_epoch: batches per epoch (None: the whole split).
        eval_steps: validation batches (None: the whole split).
        batch_size: chips per batch.
        lr: peak learning rate.
        options: further keyword options passed unchanged to geolabel's train.
    """

    epochs: int = 10
    steps_per_epoch: int | None = None
    eval_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ThresholdConfig:
    """The blessing rule of the SegmentationEvaluator.

    Args:
        min_iou: the candidate's cumulative IoU of `iou_class` on the eval split must be >= this.
        max_regression: and it may be at most this much below the last blessed model's IoU
            measured on the same eval split (0: no regression allowed).
        iou_class: the class whose IoU decides (name from `classes`).
    """

    min_iou: float = 0.5
    max_regression: float = 0.0
    iou_class: str = "building"


@dataclass
class PathConfig:
    """Where things go (relative paths are relative to the working directory).

    Args:
        root: base folder; the defaults below live under it.
        pipeline_root: TFX artifacts (default ROOT/pipeline_root).
        metadata: SQLite ML Metadata store (default ROOT/metadata.sqlite).
        serving: TF Serving base path; models are pushed to SERVING/NAME/<version>/
            (default ROOT/serving).
        pipeline_root and serving may be URLs of a TensorFlow file system (gs://, s3://, ...).
    """

    root: str = "pipeline-output"
    pipeline_root: str | None = None
    metadata: str | None = None
    serving: str | None = None

    def resolved(self) -> PathConfig:
        """A copy with every default filled in and made absolute."""
        root = Path(self.root).absolute()

        def absolute(value: str | None, default: Path) -> str:
            if not value:
                return str(default)
            return value if "://" in value else str(Path(value).absolute())  # URLs (gs://...) stay as they are

        return PathConfig(
            root=str(root),
            pipeline_root=absolute(self.pipeline_root, root / "pipeline_root"),
            metadata=absolute(self.metadata, root / "metadata.sqlite"),
            serving=absolute(self.serving, root / "serving"),
        )


@dataclass
class KubeflowConfig:
    """Settings for the compiled KubeflowV2 / Vertex AI pipeline.

    Args:
        image: container image with geolabel and its pinned environment (the `Dockerfile`):
            every step runs in it, and Dataflow workers use it as Beam's SDK container.
        pipeline_root: artifact root on shared storage (e.g. gs://bucket/geolabel).
        serving: TF Serving base path on shared storage for the Pusher.
        project, region, temp_location: Dataflow settings for the Beam-using steps.
        output: where `geolabel pipeline compile` writes the JSON spec.
        beam_args: extra Beam flags (appended after the Dataflow ones).
    """

    image: str = "geolabel:latest"
    pipeline_root: str = "gs://BUCKET/geolabel/pipeline_root"
    serving: str = "gs://BUCKET/geolabel/serving"
    project: str = "PROJECT"
    region: str = "europe-west1"
    temp_location: str = "gs://BUCKET/geolabel/tmp"
    output: str = "geolabel-pipeline.json"
    beam_args: list[str] = field(default_factory=list)

    def dataflow_beam_args(self) -> list[str]:
        """Beam flags that run the Beam-using steps on Google Cloud Dataflow."""
        return [
            "--runner=DataflowRunner",
            f"--project={self.project}",
            f"--region={self.region}",
            f"--temp_location={self.temp_location}",
            f"--sdk_container_image={self.image}",
            *self.beam_args,
        ]


_SECTIONS = {
    "pretrain": SourceConfig,
    "finetune": SourceConfig,
    "model": ModelConfig,
    "pretrain_budget": BudgetConfig,
    "finetune_budget": BudgetConfig,
    "thresholds": ThresholdConfig,
    "paths": PathConfig,
    "kubeflow": KubeflowConfig,
}


@dataclass
class PipelineConfig:
    """The whole pipeline (see the module docstring for each section)."""

    name: str = "geolabel"
    classes: list[str] = field(default_factory=lambda: ["background", "building"])
    pretrain: SourceConfig = field(default_factory=SourceConfig)
    finetune: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain_budget: BudgetConfig = field(default_factory=BudgetConfig)
    finetune_budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(epochs=5, lr=3e-4))
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    paths: PathConfig = field(default_factory=PathConfig)
    cache: bool = True
    beam_args: list[str] = field(default_factory=lambda: list(LOCAL_BEAM_ARGS))
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if value is None:
                setattr(self, name, cls())
            elif isinstance(value, dict):
                known = {f.name for f in dataclasses.fields(cls)}
                unknown = sorted(set(value) - known)
                if unknown:
                    raise InputError(name, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
                setattr(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise InputError(name, f"must be a mapping, got {type(value).__name__}")

    def check(self) -> None:
        """Raise InputError naming the option when the config cannot run."""
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise InputError("name", f"{self.name!r}: use letters, digits, - and _ only")
        if len(self.classes) < 2 or self.classes[0] != "background":
            raise InputError("classes", "need at least two classes, background first")
        if self.thresholds.iou_class not in self.classes:
            raise InputError("thresholds.iou_class", f"{self.thresholds.iou_class!r} is not one of {self.classes}")
        if not 0.0 <= self.thresholds.min_iou <= 1.0:
            raise InputError("thresholds.min_iou", "must be between 0 and 1")
        if self.thresholds.max_regression < 0:
            raise InputError("thresholds.max_regression", "must be >= 0")
        self.pretrain.check("pretrain")
        self.finetune.check("finetune")
        for stage in ("pretrain_budget", "finetune_budget"):
            budget: BudgetConfig = getattr(self, stage)
            if budget.epochs < 1 or budget.batch_size < 1 or budget.lr <= 0:
                raise InputError(stage, "epochs and batch_size must be >= 1 and lr > 0")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of the whole config."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def load_pipeline_config(path: str | os.PathLike | None = None, settings: Sequence[str] = (), **overrides: Any) -> PipelineConfig:
    """Read a pipeline YAML file (defaults for what it leaves out), apply `settings`, check it and return it.

    Each setting is `KEY.PATH=VALUE` with a YAML value (`pretrain_budget.epochs=1`,
    `model.options={depth: 2}`); keyword `overrides` replace whole top-level keys.
    """
    config = load_config(PipelineConfig, path, **overrides)
    if settings:
        values = dataclasses.asdict(config)
        for setting in settings:
            _apply_setting(values, setting)
        config = PipelineConfig(**values)
    config.check()
    return config


def _apply_setting(values: dict[str, Any], setting: str) -> None:
    """Set one `KEY.PATH=VALUE` in the config's dict; keys of the config and its sections must exist."""
    key, sep, text = setting.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise InputError("--set", f"{setting!r}: expected KEY.PATH=VALUE (e.g. pretrain_budget.epochs=1)")
    node = values
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or (depth < 2 and part not in node):  # free keys only inside `options`
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
            raise InputError("--set", f"{key}: no such option (known under {'.'.join(parts[:depth]) or 'the top level'}: {known})")
        if depth == len(parts) - 1:
            try:
                node[part] = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise InputError("--set", f"{setting!r}: the value is not YAML ({err.problem})") from err
        else:
            node = node[part]
