"""Export trained models as TF Serving SavedModels (`BASE/VERSION/saved_model.pb`).

Signatures (all keep the batch dimension `None`; every output shares it):

- `serving_default`: `images` float32 (B, H, W, C) pixel values as the sensor gives them
  (a uint8 batch sent as JSON integers is accepted by TF Serving's float conversion) ->
  `probabilities` float32 (B, H, W, K) and `classes` int64 (B, H, W).
- `serving_uint8`: the same from a uint8 tensor (gRPC clients sending raw bytes of pixels).
- `serving_bytes`: `image_bytes` string (B,) of encoded PNG/JPEG images of one size,
  sent over REST as `{"b64": ...}` (TF Serving decodes the base64, the graph decodes
  the image) -> the same outputs.
- `serving_scene` (runs trained with scene standardisation): `images` as `serving_default`
  plus `scene_mean` and `scene_std` float32 (B, C), the band statistics of the whole scene
  the images are windows of (`geolabel predict --endpoint` sends them), nodata pixels marked
  negative (`NODATA_MARK`) -> the same outputs.
- `polygons` (with a PolyCNN run): `patches` float32 (B, P, P, C) -> `vertices`
  float32 (B, 4, 2), (x, y) in [0, 1] of the patch, x to the right, y down.
- `map_update` (with an align/update run): `image` float32 (B, H, W, 3) and `map`
  float32 (B, H, W, 3) rasterised (fill, edge, vertex) in [0, 1] -> `displacement`
  float32 (B, H, W, 2) in pixels and `segmentation` float32 (B, H, W, 4).

The run's input contract (`geolabel.predict.run_inputs.RunInputs`) is inside the graph, so
TF Serving returns what `geolabel predict RUN` returns with no client option: the band
choice (C = the highest imagery band the run reads), the 16-bit stretch (float requests;
uint8 ones are 8-bit already) and the scene standardisation, from `scene_mean`/`scene_std`
or else from each request image's own pixels (a whole image per request, where pixels 0 on
every band are nodata). Nodata pixels go to the network as 0, as in local predict.

Segmentation signatures pad H and W up to a multiple of the network's stride by
mirroring the border and crop the outputs back to the input size. A network may need
more than its stride (the FCN reflect-pads by 34 px inside, so it needs 36 px): the
export finds the smallest multiple of the stride the network accepts (`min_input_size`),
and a smaller request fails with a clear INVALID_ARGUMENT (HTTP 400 in TF Serving)
instead of the network's own graph error.
Warm-up requests for every signature go to `assets.extra/tf_serving_warmup_requests`
(images of at least the minimum size, so that TF Serving, which refuses a version whose
warm-up fails, loads it), and `assets.extra/geolabel.json` records the stride, minimum
input size, bands, classes and sources.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geolabel.errors import InputError
from geolabel.progress import logger

WARMUP_FILE = "tf_serving_warmup_requests"
NODATA_MARK = -1.0  # the value of nodata pixels in `serving_scene` requests
METADATA_FILE = "geolabel.json"


def _mirror_pad_to(x: Any, stride: int) -> tuple[Any, Any, Any]:
    """Pad (B, H, W, C) at the bottom/right to multiples of `stride` by mirroring (any size works)."""
    import tensorflow as tf

    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    hp = (h + stride - 1) // stride * stride
    wp = (w + stride - 1) // stride * stride

    def index(n: Any, n_pad: Any) -> Any:
        i = tf.range(n_pad)
        period = tf.maximum(2 * n, 1)
        i = tf.math.floormod(i, period)
        return tf.where(i < n, i, period - 1 - i)

    x = tf.gather(x, index(h, hp), axis=1)
    x = tf.gather(x, index(w, wp), axis=2)
    return x, h, w


@contextlib.contextmanager
def _symbolic_resize() -> Iterator[None]:
    """Let `keras.ops.image.resize` take sizes that are graph tensors while tracing.

    Keras 3's `ops.image.resize` checks `size[0] <= 0` in Python, which fails when a
    signature with unknown H and W is traced (bilinear `UpSampling2D`, U-Net decoders
    resizing to a skip's shape). The backend op itself accepts tensor sizes, so during
    the export trace such calls go straight to it; other calls are unchanged.
    """
    import keras
    import keras.src.ops.image as src_image
    import tensorflow as tf

    original = src_image.resize

    def resize(images: Any, size: Any, *args: Any, **kwargs: Any) -> Any:
        if any(tf.is_tensor(s) for s in size):
            return src_image._resize(images, tuple(size), *args, **kwargs)
        return original(images, size, *args, **kwargs)

    src_image.resize = resize
    keras.ops.image.resize = resize
    try:
        yield
    finally:
        src_image.resize = original
        keras.ops.image.resize = original


MAX_PROBE_SIDE = 4096


def min_input_size(run: Any, stride: int, source: Any = "model") -> int:
    """The smallest side (a multiple of `stride`) of a square input that `run(side)` accepts.

    Networks with inner reflect padding or valid convolutions refuse small inputs with a
    graph error (FCN: `paddings must be less than the dimension size: 34, 34 not less than
    8`). Sides double from `stride` until one runs, then a binary search between the last
    failure and that success finds the smallest (acceptance grows with the side).
    """
    failures: list[BaseException] = []

    def ok(side: int) -> bool:
        try:
            run(side)
            return True
        except Exception as err:  # noqa: BLE001  (TF op errors, Keras shape errors: all mean "too small")
            failures.append(err)
            return False

    bad, good = 0, stride
    while not ok(good):
        bad = good
        good *= 2
        if good > MAX_PROBE_SIDE:
            reason = str(failures[-1]).strip().split("\n")[-1] if failures else ""
            raise InputError(source, f"the network fails on every input up to {MAX_PROBE_SIDE} px ({reason})")
    while good - bad > stride:
        mid = (bad + good) // 2 // stride * stride
        if mid <= bad:
            break
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


def _check_min_size(padded: Any, h: Any, w: Any, min_size: int, stride: int, what: str) -> Any:
    """`padded` once its H and W reach `min_size`; else INVALID_ARGUMENT naming the smallest accepted input."""
    import tensorflow as tf

    if min_size <= stride:  # every request pads to at least one stride
        return padded
    smallest = min_size - stride + 1
    shape = tf.shape(padded)
    ok = tf.logical_and(shape[1] >= min_size, shape[2] >= min_size)
    message = tf.strings.format(
        what + " of {}x{} px are smaller than the smallest input this model accepts, "
        f"{smallest}x{smallest} px ({min_size} px after padding to a multiple of its stride {stride})",
        [h, w],
    )
    with tf.control_dependencies([tf.debugging.Assert(ok, [message], summarize=1)]):
        return tf.identity(padded)


def _model_input(images: Any, expects: Any, stretch: bool, scene: tuple[Any, Any] | None = None) -> Any:
    """The network's input from request pixels, as local predict makes it from a raster
    (`RunInputs`): bands chosen, 16-bit stretched (if `stretch`), colours standardised from
    `scene` = (mean, std) (B, C) of the raw bands or else each image's own statistics."""
    import tensorflow as tf

    from geolabel.data.standardize import REFERENCE_MEAN, REFERENCE_STD

    x = tf.cast(images, tf.float32)
    bands = list(expects.scaling.bands) if expects.scaling else None
    if bands and bands != list(range(1, len(bands) + 1)):
        x = tf.gather(x, [b - 1 for b in bands], axis=-1)
        if scene is not None:
            scene = tuple(tf.gather(v, [b - 1 for b in bands], axis=-1) for v in scene)
    if not expects.scene_norm and not (stretch and expects.scaling and expects.scaling.stretch):
        return x
    if scene is None:  # a whole image: pixels 0 on every band are nodata
        valid = tf.reduce_any(tf.not_equal(x, 0.0), axis=-1, keepdims=True)
    else:  # windows of a scene: the client marks nodata pixels negative (NODATA_MARK)
        valid = tf.reduce_all(x >= 0.0, axis=-1, keepdims=True)
        x = tf.maximum(x, 0.0)
    if stretch and expects.scaling and expects.scaling.stretch:
        low = tf.constant([expects.scaling.stretch[b - 1][0] for b in bands], tf.float32)
        high = tf.constant([expects.scaling.stretch[b - 1][1] for b in bands], tf.float32)
        x = tf.clip_by_value(tf.round((x - low) / (high - low) * 254.0 + 1.0), 1.0, 255.0)
        if scene is not None:  # the statistics through the same (linear) stretch
            scene = ((scene[0] - low) / (high - low) * 254.0 + 1.0, scene[1] * 254.0 / (high - low))
    if not expects.scene_norm:
        return tf.where(valid, x, 0.0)
    if scene is None:  # the request image's own statistics, over its valid pixels
        weight = tf.cast(valid, tf.float32)
        count = tf.maximum(tf.reduce_sum(weight, axis=[1, 2]), 1.0)
        mean = tf.reduce_sum(x * weight, axis=[1, 2]) / count
        deviation = (x - mean[:, None, None, :]) * weight
        std = tf.sqrt(tf.reduce_sum(deviation * deviation, axis=[1, 2]) / count)
    else:
        mean, std = (tf.cast(v, tf.float32) for v in scene)
    std = tf.maximum(std, 1.0) if expects.scene_contrast else tf.fill(tf.shape(mean), REFERENCE_STD)
    gain = REFERENCE_STD / std
    x = tf.clip_by_value((x - mean[:, None, None, :]) * gain[:, None, None, :] + REFERENCE_MEAN, 0.0, 255.0)
    return tf.where(valid, x, 0.0)


def _segment_fn(model: Any, stride: int, min_size: int = 0) -> Any:
    import tensorflow as tf

    def run(images: Any) -> dict[str, Any]:
        x = tf.cast(images, tf.float32)
        padded, h, w = _mirror_pad_to(x, stride)
        padded = _check_min_size(padded, h, w, min_size, stride, "images")
        probs = model(padded, training=False)
        probs = tf.cast(probs[:, :h, :w, :], tf.float32)
        return {"probabilities": probs, "classes": tf.argmax(probs, axis=-1, output_type=tf.int64)}

    return run


def _decode_batch(image_bytes: Any, bands: int) -> Any:
    import tensorflow as tf

    def decode(data: Any) -> Any:
        image = tf.io.decode_image(data, channels=bands, expand_animations=False, dtype=tf.uint8)
        image.set_shape([None, None, bands])
        return image

    return tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([None, None, bands], tf.uint8))


def _write_warmup(version_dir: Path, requests: list[tuple[str, dict[str, Any]]], model_name: str) -> None:
    """Write PredictionLog protos (one PredictRequest per signature) as TF Serving warm-up data."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    extra = version_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_saved_model(
    model: Any,
    out_base: str | os.PathLike,
    version: int,
    *,
    polycnn: Any = None,
    align_update: Any = None,
    class_names: list[str] | None = None,
    sources: dict[str, str] | None = None,
    model_name: str = "geolabel",
    overwrite: bool = False,
    expects: Any = None,
    precision: str = "float32",
) -> Path:
    """Write `model` (and optional PolyCNN / align-update models) as `out_base/version/`.

    `expects` (a `RunInputs`, default: pixels as they are) is the run's input contract, put
    into every segmentation signature. `precision` is the segmentation graph's compute type:
    float32 runs anywhere; bfloat16 is for servers whose CPUs have bf16 units (AMX), float16
    for GPU servers (probabilities stay float32 either way).

    The version folder is assembled under a hidden temporary name beside it and renamed
    into place at the end, so a polling server never sees a half-written version.
    Returns the version folder.
    """
    with _symbolic_resize():
        return _export(model, out_base, version, polycnn, align_update, class_names, sources, model_name, overwrite,
                       expects, precision)


def _export(
    model: Any,
    out_base: str | os.PathLike,
    version: int,
    polycnn: Any,
    align_update: Any,
    class_names: list[str] | None,
    sources: dict[str, str] | None,
    model_name: str,
    overwrite: bool,
    expects: Any,
    precision: str,
) -> Path:
    import keras
    import numpy as np
    import tensorflow as tf

    from geolabel.models import stride_of
    from geolabel.precision import EXPORT_PRECISIONS, with_precision
    from geolabel.predict.fused import with_portable_rewrites
    from geolabel.predict.run_inputs import RunInputs

    expects = expects or RunInputs()
    if precision not in EXPORT_PRECISIONS:
        raise InputError("--precision", f"must be one of {', '.join(EXPORT_PRECISIONS)}, not {precision!r}")

    if int(version) < 0:
        raise InputError("--version", f"must be a non-negative integer, got {version}")
    base = Path(out_base)
    final = base / str(int(version))
    if final.exists() and not overwrite:
        raise InputError(final, "version folder already exists (pass overwrite=True / --overwrite)")
    base.mkdir(parents=True, exist_ok=True)

    stride = stride_of(model)
    bands = int(model.input_shape[-1])
    num_classes = int(model.output_shape[-1])
    computing = with_precision(model, precision)
    if precision != "float32" and computing is model:
        raise InputError("--precision", f"{model.name} cannot be rebuilt layer by layer in {precision}: export it in float32")
    model = with_portable_rewrites(computing)  # the predictor's rewrites: plain TF ops
    if bands not in (1, 3, 4):
        logger.warning("model has %d bands: the serving_bytes signature decodes only 1, 3 or 4", bands)
    min_size = min_input_size(
        lambda side: model(np.full((1, side, side, bands), 127, np.float32), training=False), stride, "segmentation model"
    )
    segment = _segment_fn(model, stride, min_size)

    # requests carry the imagery bands the run reads (up to the highest), the graph picks them
    in_bands = max(expects.scaling.bands) if expects.scaling else bands
    archive = keras.export.ExportArchive()
    archive.track(model)
    image_spec = tf.TensorSpec([None, None, None, in_bands], tf.float32, name="images")
    archive.add_endpoint("serving_default", tf.function(lambda images: segment(_model_input(images, expects, True)),
                                                        input_signature=[image_spec]))
    uint8_spec = tf.TensorSpec([None, None, None, in_bands], tf.uint8, name="images")
    archive.add_endpoint("serving_uint8", tf.function(lambda images: segment(_model_input(images, expects, False)),
                                                      input_signature=[uint8_spec]))
    bytes_bands = in_bands if in_bands in (1, 3, 4) else 3
    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    archive.add_endpoint(
        "serving_bytes",
        tf.function(lambda image_bytes: segment(_model_input(_decode_batch(image_bytes, bytes_bands), expects, False)),
                    input_signature=[bytes_spec]),
    )
    warm_size = max(2 * stride, min_size)  # TF Serving refuses a version whose warm-up requests fail
    warm_image = np.full((1, warm_size, warm_size, in_bands), 127, np.uint8)
    requests: list[tuple[str, dict[str, Any]]] = [
        ("serving_default", {"images": warm_image.astype(np.float32)}),
        ("serving_uint8", {"images": warm_image}),
    ]
    if bytes_bands == in_bands:
        png = tf.io.encode_png(warm_image[0]).numpy()
        requests.append(("serving_bytes", {"image_bytes": np.array([png], dtype=object)}))
    # TF Serving's metadata API shows signatures, not assets: clients ask this one for the stride,
    # so that they cut the same windows as local predict (the answer depends on the window grid)
    archive.add_endpoint(
        "serving_info",
        tf.function(lambda batch: {"stride": tf.fill(tf.shape(batch), stride), "min_size": tf.fill(tf.shape(batch), min_size)},
                    input_signature=[tf.TensorSpec([None], tf.int32, name="batch")]),
    )
    requests.append(("serving_info", {"batch": np.zeros(1, np.int32)}))
    signatures = ["serving_default", "serving_uint8", "serving_bytes", "serving_info"]
    if expects.scene_norm:
        stats_spec = [tf.TensorSpec([None, in_bands], tf.float32, name=n) for n in ("scene_mean", "scene_std")]
        archive.add_endpoint(
            "serving_scene",
            tf.function(lambda images, scene_mean, scene_std: segment(_model_input(images, expects, True, (scene_mean, scene_std))),
                        input_signature=[image_spec, *stats_spec]),
        )
        stats = np.full((1, in_bands), 100.0, np.float32)
        requests.append(("serving_scene", {"images": warm_image.astype(np.float32), "scene_mean": stats, "scene_std": stats / 2}))
        signatures.append("serving_scene")

    if polycnn is not None:
        archive.track(polycnn)
        patch = int(polycnn.input_shape[1])
        patch_bands = int(polycnn.input_shape[-1])

        def polygons(patches: Any) -> dict[str, Any]:
            out = polycnn(tf.cast(patches, tf.float32), training=False)
            return {"vertices": tf.reshape(tf.cast(out, tf.float32), [-1, out.shape[-1] // 2, 2])}

        spec = tf.TensorSpec([None, patch, patch, patch_bands], tf.float32, name="patches")
        archive.add_endpoint("polygons", tf.function(polygons, input_signature=[spec]))
        requests.append(("polygons", {"patches": np.full((1, patch, patch, patch_bands), 127, np.float32)}))
        signatures.append("polygons")

    if align_update is not None:
        archive.track(align_update)
        align_stride = stride_of(align_update)
        align_min = min_input_size(
            lambda side: align_update(
                (np.full((1, side, side, 3), 127, np.float32), np.zeros((1, side, side, 3), np.float32)), training=False
            ),
            align_stride,
            "align/update model",
        )

        def map_update(image: Any, map: Any) -> dict[str, Any]:  # noqa: A002  (the signature's input name)
            both = tf.concat([tf.cast(image, tf.float32), tf.cast(map, tf.float32)], axis=-1)
            padded, h, w = _mirror_pad_to(both, align_stride)
            padded = _check_min_size(padded, h, w, align_min, align_stride, "image and map")
            out = align_update((padded[..., :3], padded[..., 3:]), training=False)
            return {
                "displacement": tf.cast(out["displacement"][:, :h, :w, :], tf.float32),
                "segmentation": tf.cast(out["segmentation"][:, :h, :w, :], tf.float32),
            }

        specs = [
            tf.TensorSpec([None, None, None, 3], tf.float32, name="image"),
            tf.TensorSpec([None, None, None, 3], tf.float32, name="map"),
        ]
        archive.add_endpoint("map_update", tf.function(map_update, input_signature=specs))
        size = max(2 * align_stride, align_min)
        requests.append(
            (
                "map_update",
                {"image": np.full((1, size, size, 3), 127, np.float32), "map": np.zeros((1, size, size, 3), np.float32)},
            )
        )
        signatures.append("map_update")

    tmp = Path(tempfile.mkdtemp(prefix=f".export-{int(version)}-", dir=base))
    try:
        saved = tmp / "model"
        archive.write_out(str(saved), verbose=False)
        _write_warmup(saved, requests, model_name)
        meta = {
            "stride": stride,
            "min_input_size": max(1, min_size - stride + 1),  # smallest H and W a request may have
            "bands": in_bands,
            "inputs": {"scene_norm": expects.scene_norm, "scene_contrast": expects.scene_contrast,
                       "scaling": expects.scaling.to_dict() if expects.scaling else None},
            "num_classes": num_classes,
            "precision": precision,
            "class_names": list(class_names) if class_names else None,
            "signatures": signatures,
            "sources": dict(sources or {}),
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
        }
        (saved / "assets.extra" / METADATA_FILE).write_text(json.dumps(meta, indent=2))
        if final.exists():
            trash = tmp / "old"
            os.replace(final, trash)
        os.replace(saved, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s with signatures %s", final, ", ".join(signatures))
    return final


def export_run(
    run: str | os.PathLike,
    out_base: str | os.PathLike,
    version: int,
    *,
    polycnn_run: str | os.PathLike | None = None,
    align_update_run: str | os.PathLike | None = None,
    model_name: str = "geolabel",
    overwrite: bool = False,
    precision: str = "float32",
) -> Path:
    """Load the runs (folders, `.keras` files or `pretrained`) and export them; see `export_saved_model`."""
    from geolabel.models import load_model
    from geolabel.predict.run_inputs import RunInputs

    model = load_model(run)
    polycnn = load_model(polycnn_run) if polycnn_run else None
    align = load_model(align_update_run) if align_update_run else None
    sources = {"segmentation": os.fspath(run)}
    if polycnn_run:
        sources["polygons"] = os.fspath(polycnn_run)
    if align_update_run:
        sources["map_update"] = os.fspath(align_update_run)
    return export_saved_model(
        model,
        out_base,
        version,
        polycnn=polycnn,
        align_update=align,
        class_names=_run_class_names(run),
        sources=sources,
        model_name=model_name,
        overwrite=overwrite,
        expects=RunInputs.of(run),
        precision=precision,
    )


def _run_class_names(run: str | os.PathLike) -> list[str] | None:
    """Class names from a run folder's config.yaml (`classes:` list), when it has one."""
    from geolabel.pretrained import resolve_run

    path = resolve_run(run)
    config = path / "config.yaml" if path.is_dir() else path.with_name("config.yaml")
    if not config.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError:
        return None
    classes = data.get("classes") if isinstance(data, dict) else None
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        return classes
    return None
