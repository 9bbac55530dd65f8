"""Read a safetensors header without reading any tensor data (cheap at 41 GB)."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import TranscoderValidationError

# safetensors dtype names -> torch dtype names
DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # torch dtype name, or the raw safetensors name if not a float type
    shape: tuple[int, ...]


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor names -> dtype and shape. Raises TranscoderValidationError for a missing,
    unreadable or truncated file (data shorter than the header declares)."""
    path = Path(path)
    if not path.is_file():
        raise TranscoderValidationError(path, None, "file is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise TranscoderValidationError(path, None, f"not a readable safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    out, end = {}, 0
    for name, meta in header.items():
        start, stop = meta["data_offsets"]
        end = max(end, stop)
        out[name] = TensorInfo(DTYPES.get(meta["dtype"], meta["dtype"]), tuple(meta["shape"]))
    if 8 + n + end > size:
        last = max(header, key=lambda k: header[k]["data_offsets"][1])
        raise TranscoderValidationError(
            path, last, f"file is truncated: {size} bytes, header declares {8 + n + end}")
    return out
