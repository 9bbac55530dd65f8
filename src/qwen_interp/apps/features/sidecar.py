"""The ``features/`` sidecar that circuit-tracer's graph viewer reads for each CLT feature's panel
(top/bottom logits, example contexts, activation histogram, firing frequency).

Layout, as the viewer's ``loadFeatureFromBinary`` and ``util.getFile`` read it:

- ``index.json.gz``: gzip of a JSON object keyed by layer ("0", "1", ...), each
  ``{"filename": <file in this folder>, "offsets": [n_features + 1 byte offsets]}``;
- one binary file per layer; feature ``f`` is the bytes ``offsets[f]:offsets[f + 1]``: a 4-byte
  little-endian length ``N``, then ``N`` bytes of zlib-compressed UTF-8 JSON (the record).

The viewer names a feature by the Cantor pairing of (layer, feature), as circuit-tracer's
``Node.feature_node`` does. Records follow circuit-tracer's ``frontend/feature_models.Model``.
See docs/feature-sidecar.md.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import re
import shutil
import zlib
from collections.abc import Iterable
from pathlib import Path

from qwen_interp.atomic import file_lock, lock_path, remove_leftovers, temp_folder

INDEX_NAME = "index.json.gz"
LENGTH_BYTES = 4
# The viewer assembles the length with JS bit operators, i.e. as a signed 32-bit integer.
_MAX_PAYLOAD = 2**31 - 1
# Layer files are fetched as `/features/<name>` (a URL path): plain names only.
_SAFE_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The record schema of circuit-tracer's frontend/feature_models.py (Model, ExamplesQuantile,
# Example). `float` means a JSON number (int or float, never bool); `[x]` a list of `x`.
EXAMPLE_FIELDS: dict = {
    "tokens": [str],
    "tokens_acts_list": [float],
    "train_token_ind": int,
    "is_repeated_datapoint": bool,
}
QUANTILE_FIELDS: dict = {"quantile_name": str, "examples": [EXAMPLE_FIELDS]}
RECORD_FIELDS: dict = {
    "transcoder_id": str,
    "index": int,
    "examples_quantiles": [QUANTILE_FIELDS],
    "top_logits": [str],
    "bottom_logits": [str],
    "act_min": float,
    "act_max": float,
    "quantile_values": [float],
    "histogram": [float],
    "activation_frequency": float,
}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
# Exact types that pass a list check in one C-speed pass; anything else is checked item by item
# (numpy float64, a float subclass, passes there; bool never counts as a number).
_FAST_TYPES: dict[type, set[type]] = {str: {str}, int: {int}, float: {float, int}, bool: {bool}}


def cantor_pair(layer: int, feature: int) -> int:
    """The viewer's feature id of (layer, feature), as circuit-tracer's graph JSON writes it."""
    _check_natural("layer", layer)
    _check_natural("feature", feature)
    diagonal = layer + feature
    return diagonal * (diagonal + 1) // 2 + feature


def cantor_unpair(z: int) -> tuple[int, int]:
    """(layer, feature) of a viewer feature id; util.js ``cantorUnpair`` in exact integers."""
    _check_natural("feature id", z)
    w = (math.isqrt(8 * z + 1) - 1) // 2
    t = (w * w + w) // 2
    feature = z - t
    return w - feature, feature


def _check_natural(what: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")


# --- records --------------------------------------------------------------------------------------
def check_record(record: dict) -> None:
    """Raise ValueError, naming the field, unless ``record`` has the fields of circuit-tracer's
    ``Model`` with the JSON types the viewer expects and values it can draw: tokens and their
    activations of equal length, ``train_token_ind`` inside the tokens, finite numbers,
    ``act_min <= act_max``, ascending ``quantile_values``, a frequency within [0, 1].
    Extra fields are allowed (the viewer and ``Model`` ignore them)."""
    if not isinstance(record, dict):
        raise ValueError(f"a feature record must be a dict, got {type(record).__name__}")
    _check_fields(record, RECORD_FIELDS, "")
    for q, quantile in enumerate(record["examples_quantiles"]):
        for e, example in enumerate(quantile["examples"]):
            where = f"examples_quantiles[{q}].examples[{e}]"
            n_tokens = len(example["tokens"])
            if len(example["tokens_acts_list"]) != n_tokens:
                raise ValueError(
                    f"{where}.tokens_acts_list has {len(example['tokens_acts_list'])} values "
                    f"for {n_tokens} tokens")
            if n_tokens and not 0 <= example["train_token_ind"] < n_tokens:
                raise ValueError(f"{where}.train_token_ind is {example['train_token_ind']}, "
                                 f"outside its {n_tokens} tokens")
    if record["act_min"] > record["act_max"]:
        raise ValueError(f"act_min ({record['act_min']}) is above act_max ({record['act_max']})")
    values = record["quantile_values"]
    for i in range(1, len(values)):
        # The viewer reports the first quantile at or above a node's activation.
        if values[i] < values[i - 1]:
            raise ValueError(f"quantile_values must ascend: [{i}] = {values[i]} is below "
                             f"[{i - 1}] = {values[i - 1]}")
    if not 0 <= record["activation_frequency"] <= 1:
        raise ValueError(f"activation_frequency must be a fraction in [0, 1], "
                         f"got {record['activation_frequency']}")


def _check_fields(obj: dict, fields: dict, prefix: str) -> None:
    for name, kind in fields.items():
        if name not in obj:
            raise ValueError(f"missing field {prefix + name!r}")
        _check_value(obj[name], kind, prefix + name)


def _check_value(value: object, kind: object, where: str) -> None:
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where!r} must be an object, got {type(value).__name__}")
        _check_fields(value, kind, where + ".")
    elif isinstance(kind, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where!r} must be a list, got {type(value).__name__}")
        item = kind[0]
        if isinstance(item, type):
            _check_scalars(value, item, where)
        else:
            for i, v in enumerate(value):
                _check_value(v, item, f"{where}[{i}]")
    else:
        assert isinstance(kind, type)  # the schema's leaves are types
        _check_scalar(value, kind, where)


def _check_scalars(values: list | tuple, kind: type, where: str) -> None:
    if not set(map(type, values)) <= _FAST_TYPES[kind]:
        for i, v in enumerate(values):
            _check_scalar(v, kind, f"{where}[{i}]")
    elif kind is float and not all(map(math.isfinite, values)):
        i = next(i for i, v in enumerate(values) if not math.isfinite(v))
        _check_scalar(values[i], kind, f"{where}[{i}]")


def _check_scalar(value: object, kind: type, where: str) -> None:
    if kind is float or kind is int:
        ok = isinstance(value, (int, float) if kind is float else int)
        ok = ok and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"{where!r} must be {_JSON_NAMES[kind]}, got {type(value).__name__} "
                         f"{value!r:.60}")
    if kind is float and not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{where!r} must be finite (JSON has no NaN or infinity), "
                         f"got {value!r}")


def encode_record(record: dict) -> bytes:
    """A record as the viewer's 'bin' reader takes it: 4-byte little-endian length, then the
    zlib-compressed UTF-8 JSON (pako.inflate detects the zlib header)."""
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        payload = zlib.compress(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (lone surrogates) included
        raise ValueError(f"record is not valid JSON for the viewer: {exc}") from None
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"record compresses to {len(payload)} bytes, over the viewer's "
                         f"{_MAX_PAYLOAD}-byte limit")
    return len(payload).to_bytes(LENGTH_BYTES, "little") + payload


# --- writing --------------------------------------------------------------------------------------
def write_sidecar(folder: str | Path, layers: Iterable[tuple[int, Iterable[dict]]], *,
                  filename: str = "layer_{layer}.bin") -> Path:
    """Write the ``features/`` folder ``folder`` from ``(layer, records)`` pairs; return it.

    Records stream to disk one by one (memory holds one record and the offsets), each checked
    by ``check_record`` and required to have ``index`` equal to its position in the layer. The
    folder is built in a private temporary sibling and renamed into place only when complete:
    an existing ``folder`` stays as it was if this raises or the process is killed, and
    leftovers of killed runs are deleted by the next run."""
    final = Path(folder)
    if final.exists() and not final.is_dir():
        raise ValueError(f"{final} exists and is not a folder: expected a features/ folder")
    _check_filename_template(filename)
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path(final)):  # a second writer of the same folder waits
        remove_leftovers(final.parent, own=final, others=False)
        tmp = temp_folder(final)
        try:
            index = _write_layers(tmp, layers, filename, final)
            with open(tmp / INDEX_NAME, "wb") as fh:
                text = json.dumps(index, separators=(",", ":"))
                fh.write(gzip.compress(text.encode("utf-8"), mtime=0))
            _move_into_place(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_filename_template(filename: str) -> None:
    try:
        names = {filename.format(layer=layer) for layer in (0, 1)}
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"filename template {filename!r} must use only {{layer}}: {exc}") from None
    if len(names) != 2:
        raise ValueError(f"filename template {filename!r} must contain {{layer}}")
    for name in names:
        if not _SAFE_FILENAME.fullmatch(name) or name == INDEX_NAME:
            raise ValueError(f"filename template {filename!r} gives {name!r}: expected a plain "
                             f"file name of letters, digits, '.', '_', '-'")


def _write_layers(tmp: Path, layers: Iterable[tuple[int, Iterable[dict]]], filename: str,
                  final: Path) -> dict:
    index: dict[str, dict] = {}
    for layer, records in layers:
        _check_natural("layer", layer)
        if str(layer) in index:
            raise ValueError(f"{final}: layer {layer} is given twice")
        name = filename.format(layer=layer)
        offsets = [0]
        # "x": a template that maps two layers to one name fails instead of overwriting.
        with open(tmp / name, "xb", buffering=1 << 20) as fh:
            for position, record in enumerate(records):
                try:
                    check_record(record)
                    if record["index"] != position:
                        raise ValueError(f"'index' is {record['index']}, expected {position} "
                                         f"(its position in the layer)")
                    blob = encode_record(record)
                except ValueError as exc:
                    raise ValueError(f"{final}: layer {layer}, feature {position}: {exc}") from None
                fh.write(blob)
                offsets.append(offsets[-1] + len(blob))
        index[str(layer)] = {"filename": name, "offsets": offsets}
    if not index:
        raise ValueError(f"{final}: no layers given")
    return index


def _move_into_place(tmp: Path, final: Path) -> None:
    if not final.is_dir():
        os.rename(tmp, final)
        return
    # A folder cannot be renamed onto a non-empty one: move the old one aside first, into a
    # temporary that a later run deletes should this process die in between.
    discard = temp_folder(final)
    os.rename(final, discard / final.name)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(discard / final.name, final)  # the old folder back, as it was
        os.rmdir(discard)
        raise
    shutil.rmtree(discard, ignore_errors=True)


# --- reading --------------------------------------------------------------------------------------
def read_index(folder: str | Path) -> dict:
    """The parsed ``index.json.gz`` of ``folder`` (cached per file version; read_record uses
    the same cache)."""
    index_path = Path(folder) / INDEX_NAME
    stat = index_path.stat()  # FileNotFoundError names the path
    return _read_index(str(index_path), stat.st_ino, stat.st_mtime_ns, stat.st_size)


def read_record(folder: str | Path, layer: int, feature: int) -> dict:
    """Feature ``feature`` of ``layer`` from the ``features/`` folder ``folder``."""
    _check_natural("layer", layer)
    _check_natural("feature", feature)
    folder = Path(folder)
    index = read_index(folder)
    entry = index.get(str(layer))
    if entry is None:
        raise ValueError(f"{folder}: no layer {layer} in {INDEX_NAME} "
                         f"(layers: {', '.join(sorted(index, key=int))})")
    offsets = entry["offsets"]
    if feature >= len(offsets) - 1:
        raise ValueError(f"{folder}: layer {layer} has {len(offsets) - 1} features, "
                         f"no feature {feature}")
    start, end = offsets[feature], offsets[feature + 1]
    path = folder / entry["filename"]
    with open(path, "rb") as fh:
        fh.seek(start)
        blob = fh.read(end - start)
    length = int.from_bytes(blob[:LENGTH_BYTES], "little")
    if len(blob) < LENGTH_BYTES or length != len(blob) - LENGTH_BYTES:
        raise ValueError(f"{path}: feature {feature} (bytes {start}..{end}) is damaged: "
                         f"length prefix does not match the index")
    try:
        return json.loads(zlib.decompress(blob[LENGTH_BYTES:]).decode("utf-8"))
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"{path}: feature {feature} (bytes {start}..{end}) is damaged: "
                         f"{exc}") from None


@functools.lru_cache(maxsize=4)
def _read_index(path: str, inode: int, mtime_ns: int, size: int) -> dict:
    """The parsed index, cached per file version (a rewrite is a new folder: a new inode)."""
    try:
        index = json.loads(gzip.decompress(Path(path).read_bytes()).decode("utf-8"))
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise ValueError(f"{path}: unreadable feature index: {exc}") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by layer")
    return index
