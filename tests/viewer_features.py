"""A reader of the ``features/`` sidecar written from circuit-tracer's own viewer code, step by
step, so that tests check the writer against what the viewer does rather than against the
writer's own reader. It deliberately does not import qwen_interp.

Sources (decoderesearch/circuit-tracer, tag v0.5.0; the PyPI 0.5.0 wheel has the same util.js and
the same Hub branch of init-feature-examples.js, but not yet the local ``--features_dir`` server):

- ``frontend/assets/feature_examples/init-feature-examples.js``: ``loadFeatureFromBinary``;
- ``frontend/assets/util.js``: ``getFile`` (its 'json.gz' and 'bin' branches), ``cantorUnpair``;
- ``frontend/local_server.py``: how ``/features/<path>`` and its Range header are served;
- ``frontend/feature_models.py``: the pydantic ``Model`` of a record (used as is, below).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

# pako.inflate with default options adds 32 to windowBits 15: detect a zlib or gzip header.
PAKO_AUTO_DETECT = 15 + 32


def js_cantor_unpair(z: int) -> tuple[float, float]:
    """util.js ``cantorUnpair`` in IEEE doubles, as a JS engine computes it."""
    z = float(z)  # a JS number
    # const w = Math.floor((Math.sqrt(8 * z + 1) - 1) / 2)
    w = float(math.floor((math.sqrt(8 * z + 1) - 1) / 2))
    # const t = (w * w + w) / 2
    t = (w * w + w) / 2
    # const y = z - t
    y = z - t
    # const x = w - y
    x = w - y
    # return [x, y]
    return x, y


def js_property_key(number: float) -> str:
    """The property name JS uses for ``obj[number]``: ToString(number). For the integral values
    met here that is the integer's digits ("3" for 3.0); anything else is not a layer key."""
    if not (number == number and math.isfinite(number) and number == int(number)
            and abs(number) < 1e21):
        raise AssertionError(f"the viewer would look up a non-integral key {number!r}")
    return str(int(number))


def js_array_get(array: list, index: float):
    """``array[index]`` for a JS array: an integral in-range number, else ``undefined``
    (raised here: the viewer would go on to request ``bytes=undefined-...``, which
    local_server.py answers with a 500 error)."""
    if index != int(index) or not 0 <= index < len(array):
        raise AssertionError(f"offsets[{index}] is undefined ({len(array)} offsets)")
    return array[int(index)]


def serve_features(features_dir: str | Path, rel_path: str, range_header: str = "") -> bytes:
    """The body local_server.py's ``CircuitGraphHandler._do_GET`` sends for ``/features/...``."""
    # local_path = os.path.join(self.features_dir, rel_path)
    local_path = os.path.join(features_dir, rel_path)
    # if not os.path.exists(local_path): self.send_response(404)
    if not os.path.exists(local_path):
        raise FileNotFoundError(f"404: {local_path}")
    with open(local_path, "rb") as f:
        # if range_header.startswith("bytes="):
        if range_header.startswith("bytes="):
            # file_size = os.path.getsize(local_path)
            file_size = os.path.getsize(local_path)
            # start, end = range_header[6:].split("-")
            start, end = range_header[6:].split("-")
            # start = int(start)
            start = int(start)
            # end = int(end) if end else file_size - 1
            end = int(end) if end else file_size - 1
            # f.seek(start); content = f.read(end - start + 1)   (HTTP ranges are inclusive)
            f.seek(start)
            return f.read(end - start + 1)
        # content = f.read()
        return f.read()


def parse_json_gz(data: bytes):
    """util.js getFile, type 'json.gz' (what ``index.json.gz`` resolves to)."""
    # var decompressed = pako.inflate(new Uint8Array(compressedData), { to: 'string' })
    decompressed = zlib.decompress(data, PAKO_AUTO_DETECT).decode("utf-8")
    # return JSON.parse(decompressed)
    return js_json_parse(decompressed)


def parse_bin(data: bytes):
    """util.js getFile, type 'bin' (one feature record)."""
    # var bytes = new Uint8Array(await res.arrayBuffer())
    b = data
    # var dataLength = bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (bytes[3] << 24)
    # (JS bit operators work on signed 32-bit integers; a short body reads undefined as 0)
    byte = [b[i] if i < len(b) else 0 for i in range(4)]
    data_length = byte[0] | (byte[1] << 8) | (byte[2] << 16) | (byte[3] << 24)
    if data_length >= 2**31:
        data_length -= 2**32
    # var decompressed = pako.inflate(bytes.slice(4, 4 + dataLength), { to: 'string' })
    end = 4 + data_length
    if end < 0:  # TypedArray.slice counts a negative end from the back
        end = max(len(b) + end, 0)
    decompressed = zlib.decompress(b[4:end], PAKO_AUTO_DETECT).decode("utf-8")
    # return JSON.parse(decompressed)
    return js_json_parse(decompressed)


def js_json_parse(text: str):
    """``JSON.parse``: like json.loads, but NaN and Infinity are syntax errors in JSON."""
    def reject(name: str):
        raise ValueError(f"JSON.parse rejects {name}")
    return json.loads(text, parse_constant=reject)


def load_feature_from_binary(features_dir: str | Path, feature_index: int) -> dict:
    """init-feature-examples.js ``loadFeatureFromBinary`` for a local-path scan, whose URLs
    ``featureUrl`` makes ``/features/<path>``, served from ``features_dir``."""
    # const [layerIdx, featIdx] = util.cantorUnpair(featureIndex)
    layer_idx, feat_idx = js_cantor_unpair(feature_index)
    # const indexData = await util.getFile(featureUrl(scan, 'index.json.gz'))
    index_data = parse_json_gz(serve_features(features_dir, "index.json.gz"))
    # const offsets = indexData[layerIdx]['offsets']   (a TypeError if the layer is missing)
    entry = index_data[js_property_key(layer_idx)]
    offsets = entry["offsets"]
    # const binFilename = indexData[layerIdx]['filename']
    bin_filename = entry["filename"]
    # const startByte = offsets[featIdx]
    start_byte = js_array_get(offsets, feat_idx)
    # const endByte = offsets[featIdx + 1]
    end_byte = js_array_get(offsets, feat_idx + 1)
    # if (!binFilename || !offsets) throw new Error(`Feature ... not found in index`)
    if not bin_filename or offsets is None:
        raise AssertionError(f"Feature {feature_index} not found in index")
    # return await util.getFile(featureUrl(scan, binFilename), true, 'bin',
    #                           `bytes=${startByte}-${endByte}`)
    return parse_bin(serve_features(features_dir, bin_filename, f"bytes={start_byte}-{end_byte}"))


def validate_with_circuit_tracer(record: dict):
    """``record`` as circuit-tracer's own pydantic ``Model`` (installed circuit-tracer), in
    strict mode: a record parsed from JSON must already have these types (lax mode would turn
    "1.5" into 1.5)."""
    from circuit_tracer.frontend.feature_models import Model
    return Model.model_validate(record, strict=True)
