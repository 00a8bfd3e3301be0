"""Request inputs for the load generator: synthetic from the model's metadata, or perf_analyzer-style JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuner.errors import BadInput

NP_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
SAMPLE_COUNT = 8
# One request's inputs may not exceed this (Triton's gRPC limit is 2 GiB; far below it the host runs out first).
MAX_REQUEST_BYTES = 256 << 20
ITEM_BYTES = {"BYTES": 8}  # at least a length prefix and a few bytes per element

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, Triton datatype and the full shape of one request (batch dim included)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def parse_shape_options(items: tuple[str, ...] | list[str]) -> dict[str, tuple[int, ...]]:
    """Parse --shape NAME:d1,d2 flags (dims without the batch dimension)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.partition(":")
        try:
            if not sep or not name:
                raise ValueError
            values = tuple(int(d) for d in dims.split(","))
            if any(v < 1 for v in values):
                raise ValueError
        except ValueError:
            raise BadInput(f"--shape {item}: expected NAME:d1,d2 with positive integers, e.g. --shape INPUT:4,256") from None
        if math.prod(values) > MAX_REQUEST_BYTES:
            raise BadInput(f"--shape {item}: {math.prod(values)} elements per request; at most "
                           f"{MAX_REQUEST_BYTES >> 20} MiB per request")
        shapes[name] = values
    return shapes


def input_specs(metadata: dict[str, Any], config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> list[InputSpec]:
    """Request shapes from the model's metadata; dynamic dims come from --shape (batch size 1 for batching models)."""
    batches = int(config.get("max_batch_size", 0) or 0) > 0
    specs = []
    known = {i["name"] for i in metadata.get("inputs", [])}
    for name in shapes:
        if name not in known:
            raise BadInput(f"--shape {name}: the model has no input {name!r}; inputs: {', '.join(sorted(known))}")
    for item in metadata.get("inputs", []):
        name, datatype = item["name"], item["datatype"]
        dims = [int(d) for d in item["shape"]]
        if batches:
            dims = dims[1:]
        if name in shapes:
            given = shapes[name]
            if len(given) != len(dims) or any(d != -1 and d != g for d, g in zip(dims, given, strict=True)):
                raise BadInput(f"--shape {name}:{','.join(map(str, given))}: does not fit the model's dims {dims}")
            dims = list(given)
        elif any(d < 0 for d in dims):
            raise BadInput(
                f"input {name} has dynamic dims {dims}; give its shape with --shape {name}:"
                + ",".join("4" if d < 0 else str(d) for d in dims)
            )
        if datatype not in NP_DTYPES:
            raise BadInput(f"input {name}: datatype {datatype} is not supported by the load generator")
        specs.append(InputSpec(name, datatype, tuple(([1] if batches else []) + dims)))
    size = sum(math.prod(s.shape) * ITEM_BYTES.get(s.datatype, np.dtype(NP_DTYPES[s.datatype]).itemsize) for s in specs)
    if size > MAX_REQUEST_BYTES:
        raise BadInput(f"--shape: one request would carry {size / (1 << 20):.0f} MiB of inputs; at most "
                       f"{MAX_REQUEST_BYTES >> 20} MiB per request")
    if not specs:
        raise BadInput("the model declares no inputs; cannot generate requests")
    return specs


def synthetic_samples(specs: list[InputSpec], count: int = SAMPLE_COUNT, seed: int = 0) -> list[Sample]:
    """Deterministic random inputs of the right dtype and shape."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample: Sample = {}
        for spec in specs:
            dtype = NP_DTYPES[spec.datatype]
            if spec.datatype == "BYTES":
                sample[spec.name] = np.array(
                    [str(v).encode() for v in rng.integers(0, 1000, size=int(np.prod(spec.shape)))], dtype=np.object_
                ).reshape(spec.shape)
            elif spec.datatype == "BOOL":
                sample[spec.name] = rng.integers(0, 2, size=spec.shape).astype(np.bool_)
            elif np.issubdtype(dtype, np.integer):
                sample[spec.name] = rng.integers(0, 100, size=spec.shape).astype(dtype)
            else:
                sample[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        samples.append(sample)
    return samples


def load_input_data(path: Path, specs: list[InputSpec]) -> list[Sample]:
    """Read inputs in perf_analyzer's JSON format: {"data": [{NAME: [values] | {"content": [...], "shape": [...]}}]}."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"--input-data {path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"--input-data {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    entries = document.get("data") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BadInput(f'--input-data {path}: expected {{"data": [ {{INPUT_NAME: [...]}}, ... ]}} with at least one entry')
    samples = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadInput(f"--input-data {path}: data[{index}] must be an object mapping input names to values")
        sample: Sample = {}
        for spec in specs:
            if spec.name not in entry:
                raise BadInput(f"--input-data {path}: data[{index}] lacks input {spec.name!r}")
            value = entry[spec.name]
            shape = spec.shape
            if isinstance(value, dict):
                if "b64" in value:
                    raise BadInput(f"--input-data {path}: data[{index}].{spec.name}: b64 content is not supported; use content")
                shape_given = value.get("shape")
                value = value.get("content")
                if shape_given is not None:
                    batch = [1] if len(shape) == len(shape_given) + 1 else []
                    shape = tuple(batch + [int(d) for d in shape_given])
            where = f"--input-data {path}: data[{index}].{spec.name}"
            try:
                array = _typed_array(value, spec.datatype, where)
                sample[spec.name] = array.reshape(shape)
            except (ValueError, TypeError, OverflowError):
                raise BadInput(
                    f"--input-data {path}: data[{index}].{spec.name}: cannot shape {np.size(value)} values as {list(shape)} "
                    f"of {spec.datatype}"
                ) from None
        samples.append(sample)
    return samples


def _typed_array(value: Any, datatype: str, where: str) -> np.ndarray:
    """Values as the input's dtype; out-of-range integers and lossy float-to-integer casts are BadInput."""
    dtype = NP_DTYPES[datatype]
    if datatype == "BYTES":
        if not isinstance(value, list):
            raise TypeError
        return np.array([str(v).encode() for v in value], dtype=np.object_)
    raw = np.array(value, dtype=np.object_)
    flat = list(raw.reshape(-1))
    if any(not isinstance(v, (bool, int, float)) for v in flat):
        raise BadInput(f"{where}: expected numbers for {datatype}")
    if datatype == "BOOL":
        if any(v not in (0, 1) for v in flat):
            raise BadInput(f"{where}: expected true/false or 0/1 for BOOL")
        return raw.astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        for v in flat:
            if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
                raise BadInput(f"{where}: {v!r} is not a whole number; {datatype} would change it")
            if not info.min <= int(v) <= info.max:
                raise BadInput(f"{where}: {v!r} is out of range for {datatype} ({info.min}..{info.max})")
        return np.array([int(v) for v in flat], dtype=dtype).reshape(raw.shape)
    limit = float(np.finfo(dtype).max)
    for v in flat:
        if math.isfinite(float(v)) and abs(float(v)) > limit:
            raise BadInput(f"{where}: {v!r} is out of range for {datatype} (|x| <= {limit:g})")
    return np.array([float(v) for v in flat], dtype=dtype).reshape(raw.shape)
