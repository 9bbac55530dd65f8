"""The ``features/`` sidecar for circuit-tracer's graph viewer: records written by
``write_sidecar`` are read back by a reader transcribed from the viewer's own code
(viewer_features.py) and validate against circuit-tracer's pydantic ``Model``; feature ids agree
with circuit-tracer's graph JSON and the viewer's float ``cantorUnpair``; the folder is replaced
atomically; bad records fail with a message naming the field."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import weakref
import zlib

import numpy as np
import pytest
from circuit_tracer.frontend.feature_models import Example, ExamplesQuantile, Model
from circuit_tracer.frontend.graph_models import Node

from helpers import run_python
from qwen_interp.apps.features import sidecar
from viewer_features import (
    js_cantor_unpair,
    load_feature_from_binary,
    parse_bin,
    serve_features,
    validate_with_circuit_tracer,
)

# Tokens the viewer must get back verbatim: non-ASCII text, JSON's escaped characters, and the
# literal "\xNN" spellings of partial UTF-8 bytes that the viewer's mergeHexEscapedMax rejoins.
ODD_TOKENS = ["中文", " café", "🙂", "\\xe4\\xbd", "\\xa0", '"quoted"', "back\\slash", "\n", ""]


class Record(dict):
    """A dict that can be weakly referenced, to watch how many records the writer keeps."""


def make_record(layer: int, index: int, transcoder_id: str = "test/clt") -> Record:
    rng = random.Random(layer * 100_003 + index)
    quantiles = []
    for q, name in enumerate(["Top activations", "Subsample Interval 0"]):
        examples = []
        for _ in range(rng.randint(0, 3)):
            n = rng.randint(1, 12)
            tokens = [rng.choice(ODD_TOKENS + [f"tok{rng.randint(0, 99)}"]) for _ in range(n)]
            acts = [round(rng.uniform(0, 5), 4) if rng.random() < 0.5 else 0.0 for _ in range(n)]
            examples.append({"tokens": tokens, "tokens_acts_list": acts,
                             "train_token_ind": rng.randrange(n),
                             "is_repeated_datapoint": bool(q and rng.random() < 0.3)})
        quantiles.append({"quantile_name": name, "examples": examples})
    act_max = rng.uniform(0.5, 9.0)
    return Record(
        transcoder_id=transcoder_id, index=index, examples_quantiles=quantiles,
        top_logits=rng.sample(ODD_TOKENS, 3), bottom_logits=["tok", "中"],
        act_min=0.0, act_max=act_max,
        quantile_values=sorted(rng.uniform(0, act_max) for _ in range(100)),
        histogram=[rng.randint(0, 50) for _ in range(20)] + [0.5],
        activation_frequency=rng.uniform(0, 0.01))


LAYER_SIZES = {0: 7, 1: 1, 2: 40, 27: 3}


def layer_stream(sizes: dict[int, int], transcoder_id: str = "test/clt", alive=None):
    """``(layer, records)`` pairs whose records are made on demand; ``alive`` (a list) gets a
    weak reference to each, to check how many the writer still holds."""
    def records(layer, n):
        for index in range(n):
            record = make_record(layer, index, transcoder_id)
            if alive is not None:
                alive.append(weakref.ref(record))
                held = sum(ref() is not None for ref in alive)
                assert held <= 2, f"the writer still holds {held - 1} earlier records"
            yield record
    for layer, n in sizes.items():
        yield layer, records(layer, n)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clt") / "features"
    alive: list = []
    assert sidecar.write_sidecar(folder, layer_stream(LAYER_SIZES, alive=alive)) == folder
    return folder


def test_every_feature_resolves_through_the_viewer_code(written):
    assert sorted(os.listdir(written)) == ["index.json.gz"] + sorted(
        f"layer_{layer}.bin" for layer in LAYER_SIZES)
    for layer, n in LAYER_SIZES.items():
        for index in range(n):
            # The id the graph JSON gives this feature's nodes.
            feature_id = Node.feature_node(layer, 5, index, influence=0.1, activation=1.0).feature
            expected = make_record(layer, index)
            viewed = load_feature_from_binary(written, feature_id)
            assert viewed == expected
            model = validate_with_circuit_tracer(viewed)
            assert model.index == index and model.top_logits == expected["top_logits"]
            assert sidecar.read_record(written, layer, index) == expected


def test_index_is_gzip_json_keyed_by_layer_with_offsets(written):
    index = json.loads(gzip.decompress((written / "index.json.gz").read_bytes()))
    assert list(index) == [str(layer) for layer in LAYER_SIZES]
    for layer, n in LAYER_SIZES.items():
        entry = index[str(layer)]
        offsets = entry["offsets"]
        assert len(offsets) == n + 1 and offsets[0] == 0
        assert offsets[-1] == (written / entry["filename"]).stat().st_size
        data = (written / entry["filename"]).read_bytes()
        for f in range(n):
            blob = data[offsets[f]:offsets[f + 1]]
            assert int.from_bytes(blob[:4], "little") == len(blob) - 4
            assert blob[4] == 0x78  # a zlib header, which pako.inflate auto-detects


def test_the_viewers_extra_inclusive_byte_is_harmless(written):
    index = json.loads(gzip.decompress((written / "index.json.gz").read_bytes()))
    for layer, n in LAYER_SIZES.items():
        offsets, name = index[str(layer)]["offsets"], index[str(layer)]["filename"]
        for f in range(n):
            start, end = offsets[f], offsets[f + 1]
            # The viewer asks for bytes=start-end; HTTP ranges include `end`.
            body = serve_features(written, name, f"bytes={start}-{end}")
            last = f == n - 1
            assert len(body) == end - start + (0 if last else 1)  # clipped at the end of file
            if not last:
                assert body[-1:] == (written / name).read_bytes()[end:end + 1]
            assert parse_bin(body) == make_record(layer, f)


def test_record_schema_is_circuit_tracers_model():
    def names(model):
        return set(model.model_fields)
    assert set(sidecar.RECORD_FIELDS) == names(Model)
    assert set(sidecar.QUANTILE_FIELDS) == names(ExamplesQuantile)
    assert set(sidecar.EXAMPLE_FIELDS) == names(Example)


def test_encoded_record_is_length_prefixed_compact_utf8_json():
    record = make_record(3, 0)
    record["top_logits"] = ["中", "\\xe4"]
    blob = sidecar.encode_record(record)
    assert int.from_bytes(blob[:4], "little") == len(blob) - 4
    text = zlib.decompress(blob[4:]).decode("utf-8")
    assert '"top_logits":["中","\\\\xe4"]' in text  # raw UTF-8, compact separators
    assert parse_bin(blob) == record


def test_cantor_ids_agree_with_graph_json_and_the_viewers_float_unpair():
    rng = random.Random(0)
    features = {0, 1, 2, 20_479, 20_480, 65_535, 99_999, 100_000}
    features |= {rng.randrange(100_001) for _ in range(150)}
    for layer in range(28):
        for feature in features:
            z = sidecar.cantor_pair(layer, feature)
            assert z == Node.feature_node(layer, 0, feature).feature
            assert sidecar.cantor_unpair(z) == (layer, feature)
            assert js_cantor_unpair(z) == (layer, feature)
    # The float sqrt could go wrong first next to a perfect square, i.e. at the ends of each
    # diagonal layer + feature = w: all of them up to 27 + 100000 unpair exactly in JS.
    for w in range(100_028):
        first = w * (w + 1) // 2
        for z in (first, first + w):
            assert js_cantor_unpair(z) == sidecar.cantor_unpair(z)
    # ...and that check has teeth: far beyond any CLT, doubles do round the wrong way.
    w = 2**27
    z = w * (w + 1) // 2 - 1
    assert sidecar.cantor_unpair(z) == (0, w - 1) != js_cantor_unpair(z)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def failing_stream(sizes, bad_layer, bad_index, exc):
    for layer, records in layer_stream(sizes, "new"):
        def guarded(layer=layer, records=records):
            for record in records:
                if layer == bad_layer and record["index"] == bad_index:
                    if isinstance(exc, BaseException):
                        raise exc
                    record = exc(record)
                yield record
        yield layer, guarded()


def test_failed_write_leaves_the_old_folder_and_no_leftovers(tmp_path):
    folder = tmp_path / "features"
    sidecar.write_sidecar(folder, layer_stream({0: 2, 3: 2}, "old"))
    before = snapshot(folder)

    def bad(record):
        record["act_max"] = float("nan")
        return record
    with pytest.raises(ValueError, match=r"layer 1, feature 2: 'act_max' must be finite"):
        sidecar.write_sidecar(folder, failing_stream({0: 4, 1: 5}, 1, 2, bad))
    with pytest.raises(KeyboardInterrupt):
        sidecar.write_sidecar(folder, failing_stream({0: 4, 1: 5}, 0, 3, KeyboardInterrupt()))
    assert snapshot(folder) == before
    assert os.listdir(tmp_path) == ["features"]

    sidecar.write_sidecar(folder, layer_stream({0: 4, 1: 5}, "new"))
    assert sorted(os.listdir(folder)) == ["index.json.gz", "layer_0.bin", "layer_1.bin"]
    assert sidecar.read_record(folder, 0, 1)["transcoder_id"] == "new"
    assert load_feature_from_binary(folder, sidecar.cantor_pair(1, 4)) == make_record(1, 4, "new")
    assert os.listdir(tmp_path) == ["features"]


def test_killed_write_leaves_the_old_folder_and_the_next_run_cleans_up(tmp_path):
    folder = tmp_path / "features"
    sidecar.write_sidecar(folder, layer_stream({0: 3}, "old"))
    before = snapshot(folder)
    proc = run_python(f"""
        import os, signal
        from qwen_interp.apps.features import sidecar
        from test_features_sidecar import layer_stream

        def stream():
            for layer, records in layer_stream({{0: 3, 1: 50}}, "new"):
                def killing(records=records, layer=layer):
                    for record in records:
                        if layer == 1 and record["index"] == 20:
                            os.kill(os.getpid(), signal.SIGKILL)
                        yield record
                yield layer, killing()
        sidecar.write_sidecar({str(folder)!r}, stream())
    """, env={"PYTHONPATH": os.path.dirname(__file__)}, check=False)
    assert proc.returncode == -9, proc.stderr
    assert snapshot(folder) == before
    leftovers = [name for name in os.listdir(tmp_path) if name != "features"]
    assert leftovers and all(name.startswith(".features.") for name in leftovers)

    sidecar.write_sidecar(folder, layer_stream({0: 1}, "new"))
    assert os.listdir(tmp_path) == ["features"]
    assert sidecar.read_record(folder, 0, 0)["transcoder_id"] == "new"


def _set(path, value):
    def change(record):
        obj, keys = record, path.split("/")
        for key in keys[:-1]:
            obj = obj[int(key) if key.isdigit() else key]
        last = keys[-1]
        if value is _DELETE:
            del obj[last]
        else:
            obj[int(last) if last.isdigit() else last] = value
        return record
    return change


_DELETE = object()
_EXAMPLE = "examples_quantiles/0/examples/0"
_WHERE = re.escape("examples_quantiles[0].examples[0]")

BAD_RECORDS = [
    (_set("histogram", _DELETE), "missing field 'histogram'"),
    (_set("index", "1"), "'index' must be an integer, got str"),
    (_set("index", True), "'index' must be an integer, got bool"),
    (_set("index", 7), "'index' is 7, expected 1"),
    (_set("transcoder_id", None), "'transcoder_id' must be a string"),
    (_set("act_min", np.float32(0.5)), "'act_min' must be a number, got float32"),
    (_set("activation_frequency", 1.5), "activation_frequency must be a fraction"),
    (_set("act_min", 99.0), r"act_min \(99.0\) is above act_max"),
    (_set("quantile_values/3", -1.0), r"quantile_values must ascend: \[3\]"),
    (_set("histogram/2", float("inf")), r"'histogram\[2\]' must be finite"),
    (_set("top_logits/1", 5), r"'top_logits\[1\]' must be a string, got int"),
    (_set("examples_quantiles/0", []), r"'examples_quantiles\[0\]' must be an object"),
    (_set("examples_quantiles/0/quantile_name", 1), r"'examples_quantiles\[0\].quantile_name'"),
    (_set(f"{_EXAMPLE}/tokens", ["a", 1]), rf"'{_WHERE}.tokens\[1\]' must be a string"),
    (_set(f"{_EXAMPLE}/tokens_acts_list", [0.0, False]),
     rf"'{_WHERE}.tokens_acts_list\[1\]' must be a number, got bool"),
    (_set(f"{_EXAMPLE}/tokens_acts_list", [0.0]), rf"{_WHERE}.tokens_acts_list has 1 values"),
    (_set(f"{_EXAMPLE}/train_token_ind", 2), rf"{_WHERE}.train_token_ind is 2, outside"),
    (_set(f"{_EXAMPLE}/is_repeated_datapoint", 0), rf"'{_WHERE}.is_repeated_datapoint' must be"),
    (_set("top_logits/0", "\ud800"), "not valid JSON for the viewer"),  # a lone surrogate
]


def valid_record(index=1):
    record = make_record(0, index)
    record["examples_quantiles"][0]["examples"] = [
        {"tokens": ["a", "b"], "tokens_acts_list": [0.0, 1.0], "train_token_ind": 1,
         "is_repeated_datapoint": False}]
    return record


@pytest.mark.parametrize("change, message", BAD_RECORDS)
def test_bad_record_is_rejected_naming_the_field(tmp_path, change, message):
    def stream():
        yield 0, iter([make_record(0, 0)])
        yield 1, iter([make_record(1, 0), change(valid_record())])
    with pytest.raises(ValueError, match=r"features: layer 1, feature 1: .*" + message):
        sidecar.write_sidecar(tmp_path / "features", stream())
    assert os.listdir(tmp_path) == []


def test_valid_record_passes_both_checks():
    record = valid_record()
    sidecar.check_record(record)
    validate_with_circuit_tracer(record)
    record["act_min"] = np.float64(0.0)  # a float subclass: JSON writes it as a number
    sidecar.check_record(record)


def test_bad_arguments_fail_before_writing(tmp_path):
    good = [(0, [make_record(0, 0)])]
    for template, message in [("layer.bin", "must contain"), ("{layer}/{x}.bin", "only {layer}"),
                              ("sub/{layer}.bin", "plain file name")]:
        with pytest.raises(ValueError, match=message):
            sidecar.write_sidecar(tmp_path / "features", good, filename=template)
    with pytest.raises(ValueError, match="layer 0 is given twice"):
        sidecar.write_sidecar(tmp_path / "features", good + good)
    with pytest.raises(ValueError, match="layer must be a non-negative integer"):
        sidecar.write_sidecar(tmp_path / "features", [(-1, [])])
    with pytest.raises(ValueError, match="no layers given"):
        sidecar.write_sidecar(tmp_path / "features", [])
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        sidecar.write_sidecar(tmp_path / "file", good)
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_read_record_names_what_is_missing(written, tmp_path):
    with pytest.raises(ValueError, match="no layer 5 .*layers: 0, 1, 2, 27"):
        sidecar.read_record(written, 5, 0)
    with pytest.raises(ValueError, match="layer 1 has 1 features, no feature 1"):
        sidecar.read_record(written, 1, 1)
    with pytest.raises(FileNotFoundError, match="index.json.gz"):
        sidecar.read_record(tmp_path, 0, 0)
    with pytest.raises(ValueError, match="feature id must be a non-negative integer"):
        sidecar.cantor_unpair(-1)
