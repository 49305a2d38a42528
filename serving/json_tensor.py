"""TF Serving's JSON tensor rules (`util/json_tensor.cc`), with its error messages.

JSON values become numpy arrays of the signature's dtypes (strict: an int input rejects
1.5, a float input rejects integers it cannot hold exactly, `{"b64": ...}` only for
string inputs) and output arrays become JSON (bytes tensors whose name ends in
`_bytes` as `{"b64": ...}`). A vectorised fast path handles well-formed numeric
payloads; anything it does not accept is re-checked element by element so that the
error message is TF Serving's.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

FLOAT_MAX_INT = (1 << 24) - 1
DOUBLE_MAX_INT = (1 << 53) - 1
INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
UINT32 = (0, (1 << 32) - 1)
UINT64 = (0, (1 << 64) - 1)
F32_MAX = float(np.finfo(np.float32).max)

# numpy dtype name -> TF's DataTypeString (what TF Serving prints in messages)
TF_TYPE_NAMES = {
    "float32": "float",
    "float64": "double",
    "float16": "half",
    "int32": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "int64": "int64",
    "bool": "bool",
    "object": "string",
    "bytes": "string",
}


class JsonTensorError(ValueError):
    """A JSON value that does not convert; `code` is the gRPC status code name."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.code = code


def type_name(dtype: np.dtype) -> str:
    """TF's name for a dtype (`float`, `int32`, `string`, ...)."""
    dtype = np.dtype(dtype)
    return TF_TYPE_NAMES.get(dtype.name, "string" if dtype.kind in "OSU" else dtype.name)


# ----------------------------------------------------------------------- parsing


def _parse_error_message(text: str, err: json.JSONDecodeError) -> str:
    """rapidjson's wording for Python's JSON decode errors."""
    msg = err.msg
    if msg.startswith("Expecting value"):
        if not text[err.pos :].strip():
            return "The document is empty." if not text.strip() else "Invalid value."
        return "Invalid value."
    if msg.startswith("Extra data"):
        return "The document root must not be followed by other values."
    if msg.startswith("Expecting property name"):
        return "Missing a name for object member."
    if msg.startswith("Expecting ':'"):
        return "Missing a colon after a name of object member."
    if msg.startswith("Expecting ','"):
        return (
            "Missing a comma or ']' after an array element."
            if _innermost_open(text, err.pos) == "["
            else "Missing a comma or '}' after an object member."
        )
    if msg.startswith("Unterminated string"):
        return "Missing a closing quotation mark in string."
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        return "Invalid escape character in string."
    if msg.startswith("Invalid control character"):
        return "Invalid encoding in string."
    return msg + "."


def _innermost_open(text: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def parse_json(body: bytes | str) -> dict[str, Any]:
    """Parse a request body: TF Serving's `ParseJson` (an object, NaN/Infinity allowed)."""
    if isinstance(body, bytes | bytearray):
        if not body:
            raise JsonTensorError("JSON Parse error: The document is empty")
        try:
            text = body.decode("utf-8")  # bytearray bodies decode without a copy first
        except UnicodeDecodeError as err:
            raise JsonTensorError(f"JSON Parse error: Invalid encoding in string. at offset: {err.start}") from err
    else:
        text = body
    if not text:
        raise JsonTensorError("JSON Parse error: The document is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise JsonTensorError(f"JSON Parse error: {_parse_error_message(text, err)} at offset: {err.pos}") from err
    except RecursionError as err:
        raise JsonTensorError("JSON Parse error: Terminate parsing due to Handler error. at offset: 0") from err
    if not isinstance(doc, dict):
        raise JsonTensorError(f"JSON Value: {value_to_string(doc)} Is not object")
    return doc


# ------------------------------------------------------------------- formatting


def format_float(value: float, dtype: str = "float32") -> str:
    """TF Serving's `WriteDecimal`: 6 significant digits when that round-trips, else full precision."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    caster = np.float32 if dtype == "float32" else float
    text = "%g" % value
    if caster(float(text)) != caster(value):
        text = "%.9g" % value if dtype == "float32" else "%.17g" % value
    if "." not in text and "e" not in text:
        text += ".0"
    return text


MAX_QUOTED_BYTES = 256  # longest JSON value quoted in an error message (UTF-8 bytes, "..." included)


def value_to_string(value: Any, limit: int | None = MAX_QUOTED_BYTES) -> str:
    """`JsonValueToString`: pretty JSON (4-space indent), floats as TF Serving writes them.

    Error messages quote request values with it, so the text is cut to `limit` bytes
    (ending in "..."): a 64 MB payload never becomes a 600 MB message. The pretty text
    is generated lazily and generation stops at the limit, so quoting costs O(limit).
    """
    if isinstance(value, float):
        text = format_float(value, "float32" if abs(value) <= F32_MAX or not math.isfinite(value) else "float64")
        return _cut(text, limit)
    if isinstance(value, dict | list):
        if limit is None:
            return "".join(_pretty_pieces(value, 0))
        pieces, size = [], 0
        for piece in _pretty_pieces(value, 0):
            pieces.append(piece)
            size += len(piece.encode("utf-8"))
            if size > limit:
                break
        return _cut("".join(pieces), limit)
    return _cut(json.dumps(value, ensure_ascii=False), limit)


def _cut(text: str, limit: int | None) -> str:
    """`text` when it fits in `limit` UTF-8 bytes, else its first bytes (whole characters) and "..."."""
    if limit is None:
        return text
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[: max(0, limit - 3)].decode("utf-8", "ignore") + "..."


def _pretty_pieces(value: Any, level: int) -> Iterator[str]:
    """rapidjson's PrettyWriter output of `value`, piece by piece (so a caller can stop early)."""
    pad = "    " * (level + 1)
    end = "    " * level
    if isinstance(value, dict):
        if not value:
            yield "{}"
            return
        yield "{\n"
        for i, (k, v) in enumerate(value.items()):
            yield (",\n" if i else "") + f"{pad}{json.dumps(k, ensure_ascii=False)}: "
            yield from _pretty_pieces(v, level + 1)
        yield "\n" + end + "}"
        return
    if isinstance(value, list):
        if not value:
            yield "[]"
            return
        yield "[\n"
        for i, v in enumerate(value):
            yield (",\n" if i else "") + pad
            yield from _pretty_pieces(v, level + 1)
        yield "\n" + end + "]"
        return
    if isinstance(value, float):
        yield format_float(value, "float64")
        return
    yield json.dumps(value, ensure_ascii=False)


def json_type(value: Any) -> str:
    """`JsonTypeString`."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


# ---------------------------------------------------------------- JSON -> numpy


def is_b64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


_ASCII_SPACE = dict.fromkeys(map(ord, " \t\n\v\f\r"))


def b64_unescape(text: str) -> bytes:
    """Base64 as `absl::Base64Unescape` (TF Serving's decoder) reads it: ASCII whitespace anywhere
    is skipped (so `base64.encodebytes`' 76-column lines decode) and the final padding may be
    left out; any other character outside the alphabet is an error (binascii.Error)."""
    data = text.translate(_ASCII_SPACE)
    if "=" not in data:
        if len(data) % 4 == 1:
            raise binascii.Error("a base64 text of 4n+1 characters is truncated")
        data += "=" * (-len(data) % 4)
    return base64.b64decode(data, validate=True)


def _type_error(value: Any, dtype: np.dtype) -> JsonTensorError:
    return JsonTensorError(
        f"JSON Value: {value_to_string(value)} Type: {json_type(value)} is not of expected type: {type_name(dtype)}"
    )


def _lossy(value: Any, target: str) -> JsonTensorError:
    return JsonTensorError(f"Cannot convert JSON value: {value_to_string(value)} to {target} without loss of precision.")


def _convert_scalar(value: Any, dtype: np.dtype) -> Any:
    """`AddValueToTensor` for one leaf value."""
    kind = dtype.kind
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if dtype == np.float32 or dtype == np.float64 or dtype == np.float16:
        if not is_number:
            raise _type_error(value, dtype)
        limit = FLOAT_MAX_INT if dtype != np.float64 else DOUBLE_MAX_INT
        if isinstance(value, int):
            if abs(value) > limit:
                raise _lossy(value, "float" if dtype != np.float64 else "double")
        elif math.isfinite(value) and dtype != np.float64 and abs(value) > F32_MAX:
            raise _lossy(value, "float")
        return float(value)
    if kind in "iu":
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error(value, dtype)
        lo, hi = {"int64": INT64, "uint32": UINT32, "uint64": UINT64}.get(dtype.name, INT32)
        if not lo <= value <= hi:
            raise _type_error(value, dtype)
        return value
    if kind == "b":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if kind in "OSU":
        if isinstance(value, dict):
            if not is_b64_object(value):
                raise JsonTensorError(f"JSON Value: {value_to_string(value)} not formatted correctly for base64 data")
            try:
                return b64_unescape(value["b64"])
            except (binascii.Error, ValueError) as err:
                raise JsonTensorError("Unable to base64 decode") from err
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    raise JsonTensorError(
        f"Conversion of JSON Value: {value_to_string(value)} to type: {type_name(dtype)}", code="UNIMPLEMENTED"
    )


def dense_shape(value: Any) -> list[int]:
    """`GetDenseTensorShape`: sizes along the first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: np.dtype, out: list[Any]) -> None:
    """`FillTensorProto`: check nesting and sizes, convert leaves in order."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise JsonTensorError(
                f"JSON Value: {value_to_string(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if isinstance(value, dict) and dtype.kind not in "OSU":
            raise _type_error(value, dtype)
        out.append(_convert_scalar(value, dtype))
        return
    if level >= rank:
        raise JsonTensorError(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise JsonTensorError(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _fast(value: Any, dtype: np.dtype) -> np.ndarray | None:
    """Vectorised conversion of a well-formed numeric payload; None when the slow path must decide."""
    if dtype.kind in "OSU":
        return None
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.dtype == object or list(arr.shape) != dense_shape(value):
        return None
    if dtype.kind == "f":
        if arr.dtype.kind == "b":
            return None
        if arr.dtype.kind in "iu":
            limit = FLOAT_MAX_INT if dtype != np.float64 else DOUBLE_MAX_INT
            if arr.size and int(np.abs(arr.astype(np.int64)).max()) > limit:
                return None
        elif arr.dtype.kind == "f" and dtype != np.float64 and arr.size:
            finite = arr[np.isfinite(arr)]
            if finite.size and float(np.abs(finite).max()) > F32_MAX:
                return None
        elif arr.dtype.kind != "f":
            return None
        return arr.astype(dtype)
    if dtype.kind in "iu":
        if arr.dtype.kind not in "iu":
            return None
        lo, hi = {"int64": INT64, "uint32": UINT32, "uint64": UINT64}.get(dtype.name, INT32)
        if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
            return None
        return arr.astype(dtype)
    if dtype.kind == "b":
        return arr if arr.dtype.kind == "b" else None
    return None


def to_array(value: Any, dtype: np.dtype) -> np.ndarray:
    """Convert one JSON value (scalar or nested lists) to an array of `dtype`, TF Serving's way."""
    dtype = np.dtype(dtype)
    fast = _fast(value, dtype)
    if fast is not None:
        return fast
    shape = dense_shape(value)
    out: list[Any] = []
    _fill(value, 0, shape, dtype, out)
    if dtype.kind in "OSU":
        arr = np.empty(len(out), dtype=object)
        arr[:] = out
        return arr.reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 4:
        return np.asarray(out, dtype=np.int64).astype(dtype).reshape(shape)  # TF keeps the low bits
    return np.asarray(out, dtype=dtype).reshape(shape)


def _shape_str(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def instances_to_arrays(instances: list[Any], inputs: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """`FillTensorMapFromInstancesList`: the row format, batched along a new first axis."""
    first = instances[0]
    if not (isinstance(first, dict) and not is_b64_object(first)) and len(inputs) > 1:
        raise JsonTensorError(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        )
    objects = isinstance(first, dict) and not is_b64_object(first)
    names = sorted(inputs)
    if not objects:
        name = names[0]
        fast = _fast(instances, inputs[name])
        if fast is not None and fast.ndim >= 1:
            return {name: fast}
    rows: dict[str, list[np.ndarray]] = {}
    shapes: dict[str, list[int]] = {}

    def add(item: Any, name: str) -> None:
        if name not in inputs:
            raise JsonTensorError(f"JSON object: does not have named input: {name}")
        arr = to_array(item, inputs[name])
        shape = list(arr.shape)
        if name not in shapes:
            shapes[name] = shape
        elif int(np.prod(shapes[name])) != int(np.prod(shape)):
            raise JsonTensorError(f"Expecting tensor size: {int(np.prod(shapes[name]))} but got: {int(np.prod(shape))}")
        elif shapes[name] != shape:
            raise JsonTensorError(f"Expecting shape {_shape_str(shapes[name])} but got: {_shape_str(shape)}")
        rows.setdefault(name, []).append(arr)

    for i, elem in enumerate(instances):
        elem_is_object = isinstance(elem, dict) and not is_b64_object(elem)
        if objects:
            if not elem_is_object:
                raise JsonTensorError(f"Expecting object but got list at item {i} of input list")
            for key, item in elem.items():
                try:
                    add(item, key)
                except JsonTensorError as err:
                    raise JsonTensorError(
                        f"Failed to process element: {i} key: {key} of 'instances' list. "
                        f"Error: {err.code}: {err}",
                        err.code,
                    ) from err
            if set(elem) != set(names):
                raise JsonTensorError(
                    f"Failed to process element: {i} of 'instances' list. JSON object: {value_to_string(elem)} "
                    f"keys must be equal to: {','.join(names)}"
                )
        else:
            if elem_is_object:
                raise JsonTensorError(f"Expecting value/list but got object at item {i} of input list")
            try:
                add(elem, names[0])
            except JsonTensorError as err:
                raise JsonTensorError(
                    f"Failed to process element: {i} of 'instances' list. Error: {err.code}: {err}", err.code
                ) from err
    return {name: np.stack(arrs) if arrs[0].dtype != object else _stack_objects(arrs) for name, arrs in rows.items()}


def _stack_objects(arrs: list[np.ndarray]) -> np.ndarray:
    out = np.empty((len(arrs), *arrs[0].shape), dtype=object)
    for i, a in enumerate(arrs):
        out[i] = a[()] if a.ndim == 0 else a
    return out


def inputs_to_arrays(value: Any, inputs: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """`FillTensorMapFromInputsMap`: the columnar format."""
    if not isinstance(value, dict) or is_b64_object(value):
        if len(inputs) > 1:
            raise JsonTensorError(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        name = sorted(inputs)[0]
        return {name: to_array(value, inputs[name])}
    out = {}
    for name in sorted(inputs):
        if name not in value:
            raise JsonTensorError(f"Missing named input: {name} in 'inputs' object.")
        out[name] = to_array(value[name], inputs[name])
    return out


def predict_request_arrays(
    doc: dict[str, Any], inputs: dict[str, np.dtype]
) -> tuple[dict[str, np.ndarray], str]:
    """`FillPredictRequestFromJson` after the signature is known: (arrays, "row" | "columnar")."""
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise JsonTensorError(
            f"JSON Value: {value_to_string(doc)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise JsonTensorError(f"JSON Value: {value_to_string(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise JsonTensorError(f"JSON Value: {value_to_string(doc)} No values in 'instances' array")
        return instances_to_arrays(instances, inputs), "row"
    if has_inputs:
        return inputs_to_arrays(doc["inputs"], inputs), "columnar"
    raise JsonTensorError("Missing 'inputs' or 'instances' key")


def signature_name_of(doc: dict[str, Any]) -> str:
    """The optional `signature_name` (must be a string)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise JsonTensorError(
            f"JSON Value: {value_to_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


# ---------------------------------------------------------------- numpy -> JSON


def _leaf_strings(arr: np.ndarray, as_bytes: bool) -> list[str]:
    """JSON text of every element, in C order (floats as their shortest round-trip decimal)."""
    flat = arr.reshape(-1)
    if arr.dtype.kind == "f":
        texts = flat.astype(str)
        if not np.isfinite(flat).all():
            texts = np.where(np.isnan(flat), "NaN", texts)
            texts = np.where(np.isposinf(flat), "Infinity", texts)
            texts = np.where(np.isneginf(flat), "-Infinity", texts)
        return texts.tolist()
    out = []
    for item in flat:
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        if as_bytes:
            out.append('{"b64": "' + base64.b64encode(raw).decode("ascii") + '"}')
        else:
            out.append(json.dumps(raw.decode("utf-8", "replace"), ensure_ascii=False))
    return out


FORMAT_CHUNK = 1 << 15  # elements converted to text at once (bounds the formatting's temporary memory)


def _array_pieces(arr: np.ndarray, as_bytes: bool, out: list[str]) -> None:
    """Append the JSON text of `arr` (nested lists) to `out` in pieces of at most ~FORMAT_CHUNK elements.

    Ints and bools are written by `json` (", " between items), floats and strings by
    `_leaf_strings` ("," between items), exactly as the unchunked writer did; only the
    temporary memory differs (the whole array is never turned into Python strings at once).
    """
    if arr.size == 0 or arr.dtype.kind in "iub":  # json writes ints and bools fastest itself
        if arr.size <= FORMAT_CHUNK or arr.ndim == 0:
            out.append(json.dumps(arr.tolist()))
            return
        sep = ", "
    else:
        if arr.ndim == 0:
            out.append(_leaf_strings(arr, as_bytes)[0])
            return
        if arr.size <= FORMAT_CHUNK:
            items = _leaf_strings(arr, as_bytes)
            for d in reversed(arr.shape):
                items = ["[" + ",".join(items[i : i + d]) + "]" for i in range(0, len(items), d)]
            out.append(items[0])
            return
        sep = ","
    out.append("[")
    if arr.ndim == 1:
        for start in range(0, arr.shape[0], FORMAT_CHUNK):
            part = arr[start : start + FORMAT_CHUNK]
            text = json.dumps(part.tolist())[1:-1] if arr.dtype.kind in "iub" else ",".join(_leaf_strings(part, as_bytes))
            out.append((sep if start else "") + text)
    else:
        for i in range(arr.shape[0]):
            if i:
                out.append(sep)
            _array_pieces(arr[i], as_bytes, out)
    out.append("]")


def array_json(arr: np.ndarray, as_bytes: bool = False) -> str:
    """JSON text of an array: nested lists, floats short, NaN/Infinity as TF Serving writes them."""
    pieces: list[str] = []
    _array_pieces(np.asarray(arr), as_bytes, pieces)
    return "".join(pieces)


def outputs_to_json(outputs: dict[str, np.ndarray], fmt: str) -> bytes:
    """`MakeJsonFromTensors`: `{"predictions": ...}` (row) or `{"outputs": ...}` (columnar).

    The text is assembled from bounded pieces (see `_array_pieces`), so formatting a
    response costs about twice its JSON size instead of ~20 times its tensors' size.
    """
    if not outputs:
        raise JsonTensorError("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    arrays = {name: np.asarray(outputs[name]) for name in names}
    pieces: list[str] = []
    if fmt == "row":
        batch = -1
        for name in names:
            arr = arrays[name]
            if arr.ndim == 0:
                raise JsonTensorError(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and arr.shape[0] != batch:
                raise JsonTensorError(
                    f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} expecting: {batch}"
                )
            batch = arr.shape[0]
        pieces.append('{"predictions": [')
        if len(names) == 1:
            arr = arrays[names[0]]
            for i in range(batch):
                if i:
                    pieces.append(",")
                _array_pieces(arr[i], names[0].endswith("_bytes"), pieces)
        else:
            keys = {name: json.dumps(name, ensure_ascii=False) for name in names}
            for i in range(batch):
                pieces.append(",\n{" if i else "{")
                for j, name in enumerate(names):
                    pieces.append((", " if j else "") + keys[name] + ": ")
                    _array_pieces(arrays[name][i], name.endswith("_bytes"), pieces)
                pieces.append("}")
        pieces.append("]}")
    else:
        if len(names) == 1:
            pieces.append('{"outputs": ')
            _array_pieces(arrays[names[0]], names[0].endswith("_bytes"), pieces)
            pieces.append("}")
        else:
            pieces.append('{"outputs": {')
            for j, name in enumerate(names):
                pieces.append((", " if j else "") + json.dumps(name, ensure_ascii=False) + ": ")
                _array_pieces(arrays[name], name.endswith("_bytes"), pieces)
            pieces.append("}}")
    return "".join(pieces).encode("utf-8")


def error_json(message: str) -> bytes:
    """`MakeJsonFromStatus`: `{"error": message}` as TF Serving's pretty writer prints it."""
    return json.dumps({"error": message}, ensure_ascii=False, indent=4).encode("utf-8")
