"""TFX components of the geolabel pipeline.

- `FetchExamples`: geolabel's fetch for one AOI + imagery + labels -> an `Examples`
  artifact (Split-train / Split-eval GZIP TFRecords of geolabel chips), the dataset
  manifest recorded as artifact properties.
- `SegmentationEvaluator`: cumulative IoU on the eval split -> a `ModelBlessing` that the
  standard Pusher honours (absolute threshold AND no regression vs the last blessed model).
- `IdempotentPusherExecutor`: the standard Pusher's executor, except that a model already
  present under the serving base path (same SavedModel fingerprint) is not copied again
  as a new version.

TFX is imported narrowly (see README: `from tfx import v1` pulls packages we do not ship).
"""


import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tfx.components import Pusher  # tfx.components before anything importing TFDV
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils, proto_utils

from geolabel.pipelines.evaluation import bless, cumulative_iou, load_keras_model
from geolabel.pipelines.storage import is_remote, join, upload_dir
from geolabel.progress import logger

SPLITS = {"train": "train", "eval": "val"}  # TFX split name -> geolabel chip prefix
PAYLOAD_FORMAT = "FORMAT_TF_EXAMPLE"


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@contextlib.contextmanager
def _served(imagery: str) -> Iterator[str]:
    """`imagery` as it is, or a local XYZ tile folder template as its URL on a loopback TileServer (while open)."""
    from geolabel.data.fetch import is_tile_template
    from geolabel.data.tileserver import TileServer

    if "://" in imagery or not is_tile_template(imagery):
        yield imagery
        return
    root = imagery[: imagery.index("{")].rpartition("/")[0]
    with TileServer(root or ".") as server:
        yield f"{server.url}/{imagery[len(root) + 1 if root else 0:]}"


def fetch_dataset(source: dict, classes: list[str], out_dir: str | os.PathLike) -> dict:
    """Run geolabel's fetch for `source` (a `SourceConfig` as a dict) into `out_dir`; return the manifest.

    `sample:` paths name files of the bundled sample; a local tile folder template
    (`.../tiles/{z}/{x}/{y}.jpg`) is served on loopback for the fetch; a label raster
    (.tif: non-zero pixels are the first non-background class) is polygonised first.
    """
    from geolabel import sample
    from geolabel.data import fetch
    from geolabel.data.rasterize import mask_to_vectors

    spec = {**source, "imagery": sample.resolve(source["imagery"]), "labels": sample.resolve(source.get("labels", "osm"))}
    options = {"command": f"geolabel pipeline fetch {json.dumps(source, sort_keys=True, default=str)}", **(spec.get("options") or {})}
    if spec["labels"].lower().endswith((".tif", ".tiff")):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        spec["labels"] = str(mask_to_vectors(spec["labels"], Path(out_dir) / "labels-mask.geojson", classes[1]))
    with _served(spec["imagery"]) as imagery:
        return fetch.fetch_for_pipeline({**spec, "imagery": imagery, "options": options}, classes, out_dir)


@component
def FetchExamples(
    examples: OutputArtifact[standard_artifacts.Examples],
    source: Parameter[str],
    classes: Parameter[str],
) -> None:
    """Fetch imagery + labels for an area into an Examples artifact with train/eval splits.

    Args:
        examples: output; `Split-train/` and `Split-eval/` hold the chip shards, `dataset/`
            the fetched dataset folder (imagery.tif, labels.tif, labels.gpkg, manifest.json).
        source: JSON of a `geolabel.pipelines.config.SourceConfig`.
        classes: JSON list of class names, background first.
    """
    from geolabel.data.chips import shard_paths
    from geolabel.errors import InputError

    spec = json.loads(source)
    names = json.loads(classes)
    remote = is_remote(examples.uri)
    with tempfile.TemporaryDirectory(prefix="geolabel-fetch-") as tmp:
        root = Path(tmp) if remote else Path(examples.uri)
        dataset = root / "dataset"
        manifest = fetch_dataset(spec, names, dataset)
        counts = {}
        for split, prefix in SPLITS.items():
            shards = shard_paths(dataset / "chips", prefix)
            if not shards:
                raise InputError(str(dataset / "chips"), f"fetch wrote no {prefix}-*.tfrecord.gz shards (AOI too small?)")
            for shard in shards:
                _link_or_copy(shard, root / f"Split-{split}" / shard.name)
            counts[split] = len(shards)
        if remote:
            upload_dir(root, examples.uri, skip=("dataset/cache",))
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    examples.set_string_custom_property("payload_format", PAYLOAD_FORMAT)
    examples.set_string_custom_property("manifest", json.dumps(manifest, sort_keys=True, default=str))
    examples.set_string_custom_property("classes", json.dumps(names))
    examples.set_string_custom_property("dataset_dir", join(examples.uri, "dataset"))
    for key in ("crs", "imagery", "labels", "osm_timestamp"):
        value = manifest.get(key)
        if value is not None:
            examples.set_string_custom_property(key, value if isinstance(value, str) else json.dumps(value, default=str))
    chips = manifest.get("chips")
    if isinstance(chips, dict):
        for split, prefix in SPLITS.items():
            n = chips.get(prefix, chips.get(split))
            if isinstance(n, int):
                examples.set_int_custom_property(f"num_{split}_chips", n)
    for split, n in counts.items():
        examples.set_int_custom_property(f"num_{split}_shards", n)
    logger.info("FetchExamples: %s -> %s (%s)", spec.get("imagery"), examples.uri, counts)


@component
def SegmentationEvaluator(
    model: InputArtifact[standard_artifacts.Model],
    examples: InputArtifact[standard_artifacts.Examples],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    baseline_model: InputArtifact[standard_artifacts.Model] = None,
    min_iou: Parameter[float] = 0.5,
    max_regression: Parameter[float] = 0.0,
    class_id: Parameter[int] = 1,
    batch_size: Parameter[int] = 8,
) -> None:
    """Score the candidate (and the last blessed model) on the eval split; bless or not.

    The blessing carries `blessed` (1/0), `current_model_id`, `iou`, `baseline_iou`,
    `baseline_model_id` and `reason`; its folder holds BLESSED or NOT_BLESSED (with the reason).
    """
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(join(artifact_utils.get_split_uri([examples], "eval"), "*.tfrecord.gz")))
    score = cumulative_iou(load_keras_model(model.uri), files, class_id, batch_size)
    baseline_iou = None
    if baseline_model is not None and baseline_model.id != model.id and baseline_model.uri != model.uri:
        baseline_iou = cumulative_iou(load_keras_model(baseline_model.uri), files, class_id, batch_size)["iou"]
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
        blessing.set_float_custom_property("baseline_iou", baseline_iou)
    verdict = bless(score["iou"], min_iou, baseline_iou, max_regression)
    blessing.set_int_custom_property("blessed", int(verdict.blessed))
    blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_float_custom_property("iou", score["iou"])
    blessing.set_int_custom_property("eval_chips", score["chips"])
    blessing.set_string_custom_property("reason", verdict.reason)
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(join(blessing.uri, "BLESSED" if verdict.blessed else "NOT_BLESSED"), "w") as f:
        f.write(verdict.reason + "\n")
    logger.warning("SegmentationEvaluator: %s: %s", "blessed" if verdict.blessed else "NOT blessed", verdict.reason)


def _fingerprint(model_dir: str) -> bytes | None:
    import tensorflow as tf

    for name in ("fingerprint.pb", "saved_model.pb"):
        path = join(model_dir, name)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as f:
                return name.encode() + f.read()
    return None


class IdempotentPusherExecutor(pusher_executor.Executor):
    """The standard Pusher, except a blessed model already pushed is not copied again.

    Re-running an unchanged pipeline re-blesses the same model (its baseline is now itself);
    without this check every re-run would add an identical version to the serving path.
    """

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        import tensorflow as tf

        if self.CheckBlessing(input_dict):
            destination = pusher_pb2.PushDestination()
            proto_utils.json_to_proto(exec_properties["push_destination"], destination)
            base = destination.filesystem.base_directory
            model_path = self.GetModelPath(input_dict)
            mine = _fingerprint(model_path)
            if base and mine is not None and tf.io.gfile.isdir(base):
                names = (v.rstrip("/") for v in tf.io.gfile.listdir(base))
                for version in sorted((v for v in names if v.isdigit()), key=int, reverse=True):
                    if _fingerprint(join(base, version)) == mine:
                        model_push = artifact_utils.get_single_instance(output_dict["pushed_model"])
                        io_utils.copy_dir(model_path, model_push.uri)
                        self._MarkPushed(model_push, pushed_destination=join(base, version), pushed_version=version)
                        logger.warning("Pusher: model already served as version %s under %s; not copied again", version, base)
                        return
        super().Do(input_dict, output_dict, exec_properties)


class IdempotentPusher(Pusher):
    """The standard Pusher (honours the ModelBlessing) with `IdempotentPusherExecutor`."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(IdempotentPusherExecutor)
