"""Read a safetensors header without reading any tensor data (cheap at 41 GB)."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import TranscoderValidationError

# safetensors dtype names -> torch dtype names
DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
_MAX_HEADER = 100 * 1024 * 1024
# Bytes per element of every safetensors dtype (the format's specification).
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # torch dtype name, or the raw safetensors name if not a float type
    shape: tuple[int, ...]


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor names -> dtype and shape, from the header alone. Checks what the safetensors
    library checks when it opens the file (a JSON object of entries with a known dtype, a
    shape and ``data_offsets`` that tile the data exactly, in order, with the byte size the
    shape needs), so a file that passes here also opens there. Every failure is one
    TranscoderValidationError naming the file and, where there is one, the tensor."""
    path = Path(path)
    if not path.is_file():
        raise TranscoderValidationError(path, None, "file is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length field says {n} bytes, but the file has "
                                 f"{size} bytes")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise TranscoderValidationError(path, None,
                                        f"not a readable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise TranscoderValidationError(path, None, "not a safetensors file: the header is a "
                                        f"JSON {type(header).__name__}, expected an object")
    header.pop("__metadata__", None)
    out, spans = {}, []
    for name, meta in header.items():
        info, span = _entry(path, name, meta)
        out[name] = info
        spans.append((span, name))
    end = 0
    for (start, stop), name in sorted(spans):  # the data must be tiled in order, no gap
        if start != end:
            what = "overlaps the previous tensor" if start < end else "leaves a gap before it"
            raise TranscoderValidationError(path, name, f"data_offsets [{start}, {stop}] {what} "
                                            f"(expected to start at byte {end})")
        end = stop
    if 8 + n + end > size:
        last = max(spans)[1]
        raise TranscoderValidationError(
            path, last, f"file is truncated: {size} bytes, header declares {8 + n + end}")
    if 8 + n + end < size:
        raise TranscoderValidationError(path, None, f"{size - 8 - n - end} bytes after the last "
                                        "tensor's data: not a valid safetensors file")
    return out


def _entry(path: Path, name: str, meta) -> tuple[TensorInfo, tuple[int, int]]:
    """One header entry, checked: dtype, shape, and offsets matching the shape's byte size."""
    def bad(problem):
        return TranscoderValidationError(path, name, f"bad header entry: {problem}")

    if not isinstance(meta, dict):
        raise bad(f"expected an object with dtype, shape and data_offsets, got {meta!r:.80}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in meta:
            raise bad(f"no {key!r}")
    dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if dtype not in _ITEMSIZE:
        raise bad(f"unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_count(d) for d in shape)):
        raise bad(f"shape {shape!r:.80} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)):
        raise bad(f"data_offsets {offsets!r:.80} is not two non-negative integers")
    start, stop = offsets
    if stop < start:
        raise bad(f"data_offsets [{start}, {stop}] are reversed")
    nbytes = math.prod(shape) * _ITEMSIZE[dtype]
    if stop - start != nbytes:
        raise bad(f"data_offsets [{start}, {stop}] hold {stop - start} bytes, but {dtype} "
                  f"{shape} needs {nbytes}")
    return TensorInfo(DTYPES.get(dtype) or dtype, tuple(shape)), (start, stop)


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
