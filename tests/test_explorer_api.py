"""The Explorer's server over HTTP (no browser): offline pages, the viewer's range reads, feature
records, search, and Analyze / Compare / Steer against the tools' own computations.

References nobody here wrote: circuit-tracer's ``get_activations`` and ``feature_intervention``
(CLT activations and edits), SAELens's ``run_with_cache_with_saes`` (SAE activations), the
viewer's own byte handling (util.js ``getFile('bin')``: a 4-byte LE length, then zlib), and a
steering hook written here from Qwen-Scope's formula ``h + s * W_dec[f]``. fp32 on the CPU, the
small offline Qwen3-1.7B-Base (3 layers, CLT width 32, SAE width 256); activations within 1e-5.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import socket
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
import torch

import explorer_data
from helpers import stand_in_dictionaries

EXPLORER = Path(__file__).resolve().parents[1] / "src" / "qwen_interp" / "apps" / "explorer"


@pytest.fixture(scope="module")
def data(qwen_offline_hub, qwen_registry, tmp_path_factory):
    with stand_in_dictionaries(qwen_offline_hub, qwen_registry) as release:
        yield explorer_data.build(release, tmp_path_factory.mktemp("explorer"))


@pytest.fixture(scope="module")
def server(data):
    from qwen_interp.apps.explorer import Explorer, start_server
    app = Explorer(data.graphs, data.features, data.session, model="Qwen/Qwen3-1.7B-Base",
                   transcoder=explorer_data.TRANSCODER)
    running = start_server(app)
    yield running
    running.stop()


def get(server, path: str, headers: dict | None = None):
    request = urllib.request.Request(server.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post(server, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_json(server, path: str):
    status, _, body = get(server, path)
    return status, json.loads(body)


# --- offline pages -------------------------------------------------------------------------------
def test_viewer_page_loads_only_local_scripts(server):
    from qwen_interp.apps.explorer import viewer
    status, headers, body = get(server, "/graph/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "Attribution Graphs" in page
    scripts = re.findall(r"<script src='([^']+)'", page)
    assert scripts and all(s.startswith(("/vendor/", "/static/", "./")) for s in scripts), scripts
    assert "//" not in "".join(re.findall(r"(?:src|href)=['\"]([^'\"]+)", page))
    for src in scripts:  # every script the page names is served
        path = src if src.startswith("/") else "/graph/" + src.removeprefix("./")
        assert get(server, path)[0] == 200, src
    with pytest.raises(ValueError, match="https://example.org/x.js"):
        viewer.offline_html("<script src='https://example.org/x.js'></script>\n", "index.html")
    with pytest.raises(ValueError, match="external"):
        viewer.offline_html("<link rel='stylesheet' href='https://fonts.example/a.css'>", "x")


def test_vendored_libraries_are_the_lockfiles_packages():
    """Each vendored file is the bytes vendor.json records, from the version the npm lockfile
    pins; `python -m qwen_interp.apps.explorer.vendor --check` (in .ci/run) compares them with
    a fresh `npm ci`."""
    from qwen_interp.apps.explorer import vendor, viewer
    versions = vendor.lockfile_versions()
    entries = vendor.manifest()
    assert {e["name"] for e in entries} == {name for _, _, name in vendor.FILES}
    for entry in entries:
        assert vendor.sha256(vendor.VENDOR / entry["name"]) == entry["sha256"], entry["name"]
        assert versions[entry["package"]] == entry["version"]
    package = json.loads((vendor.VENDOR / "package.json").read_text())
    assert package["dependencies"] == {e["package"]: e["version"] for e in entries}
    targets = {t.removeprefix("/vendor/") for t in viewer.SCRIPT_MAP.values()
               if t.startswith("/vendor/")}
    assert targets <= {e["name"] for e in entries}
    # the pinned versions are the ones upstream's page names (dagre@0.8.5, pako@2.1.0)
    for url in viewer.SCRIPT_MAP:
        match = re.search(r"unpkg.com/(\w+)@([\d.]+)/", url)
        if match:
            assert versions[match[1]] == match[2]


def test_feature_panel_script_is_upstreams_tagged_file(server):
    """The one viewer file taken from upstream's v0.5.0 tag is byte-identical to it (its git
    blob id, recomputed here), and is served only while the installed wheel lacks local reads."""
    from qwen_interp.apps.explorer import viewer
    source = json.loads((EXPLORER / "static" / "circuit-tracer" / "SOURCE.json").read_text())
    for name, entry in source["files"].items():
        blob = (EXPLORER / "static" / "circuit-tracer" / name).read_bytes()
        git_id = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
        assert git_id == entry["git_blob"], name
    installed = (viewer.assets_dir() / "feature_examples" / "init-feature-examples.js").read_text()
    served = get(server, "/graph/feature_examples/init-feature-examples.js")[2].decode()
    assert "function featureUrl(" in served
    if "function featureUrl(" in installed:  # upstream has it: stand down, serve the installed
        assert served == installed
    else:
        assert served == (EXPLORER / "static" / "circuit-tracer" /
                          "init-feature-examples.js").read_text()


# --- graphs and the viewer's feature reads ---------------------------------------------------
def test_graph_scan_points_at_this_server(server, data):
    on_disk = json.loads((data.graphs / f"{explorer_data.SLUG}.json").read_text())
    status, served = get_json(server, f"/graph/graph_data/{explorer_data.SLUG}.json")
    assert status == 200
    assert served["nodes"] == on_disk["nodes"] and served["links"] == on_disk["links"]
    # upstream featureUrl: a scan starting with "/" reads /features/<file> from this server
    assert served["metadata"]["scan"].startswith("/")
    _, meta = get_json(server, "/graph/data/graph-metadata.json")
    assert [g["scan"] for g in meta["graphs"]] == [served["metadata"]["scan"]]
    assert get_json(server, "/graph/graph_data/../run.json")[0] == 404


def test_graph_of_another_transcoder_gets_no_remote_scan(data, tmp_path):
    from qwen_interp.apps.explorer import Explorer
    from qwen_interp.apps.explorer.store import NO_FEATURES_SCAN
    app = Explorer(data.graphs, None, None)  # no features: nothing may point at the Hub
    assert app.graph(explorer_data.SLUG)["metadata"]["scan"] == NO_FEATURES_SCAN
    assert app.graph_metadata()["graphs"][0]["scan"] == NO_FEATURES_SCAN


def test_release_features_from_the_hugging_face_cache(data, qwen_offline_hub, tmp_path):
    """Without --features, a graph's release `features/` folder in the HF cache is used (found
    with huggingface_hub's own cache lookup; nothing is downloaded)."""
    import shutil

    from qwen_interp.apps.explorer import Explorer
    repo = "qwen-interp-test/clt-with-features"
    qwen_offline_hub.snapshot(repo, lambda folder: shutil.copytree(
        data.features / "features", folder / "features"))
    graphs = tmp_path / "graphs"
    shutil.copytree(data.graphs, graphs)
    graph_file, meta_file = graphs / f"{explorer_data.SLUG}.json", graphs / "graph-metadata.json"
    graph, meta = json.loads(graph_file.read_text()), json.loads(meta_file.read_text())
    graph["metadata"]["scan"] = meta["graphs"][0]["scan"] = repo  # a graph of that release
    graph_file.write_text(json.dumps(graph))
    meta_file.write_text(json.dumps(meta))
    app = Explorer(graphs, None, None)
    assert app.graph(explorer_data.SLUG)["metadata"]["scan"] == "/local/" + repo
    assert app.store.clt_folder() == qwen_offline_hub.snapshot_path(repo) / "features"
    assert app.feature("clt", 2, 9)["index"] == 9


def viewer_read(server, feature_id: int) -> dict:
    """init-feature-examples.js ``loadFeatureFromBinary`` + util.js ``getFile(.., 'bin', range)``,
    step by step, over HTTP."""
    from qwen_interp.apps.features.sidecar import cantor_unpair
    layer, feature = cantor_unpair(feature_id)
    status, _, index_bytes = get(server, "/features/index.json.gz")
    assert status == 200
    index = json.loads(gzip.decompress(index_bytes))  # pako.inflate of the whole file
    offsets = index[str(layer)]["offsets"]
    start, end = offsets[feature], offsets[feature + 1]
    status, headers, blob = get(server, f"/features/{index[str(layer)]['filename']}",
                                {"Range": f"bytes={start}-{end}"})
    assert status == 206 and headers["Content-Range"].startswith(f"bytes {start}-")
    length = int.from_bytes(blob[:4], "little")
    return json.loads(zlib.decompress(blob[4:4 + length]))


def test_viewer_reads_every_feature_by_range(server, data):
    from qwen_interp.apps.features.sidecar import cantor_pair, read_record
    for layer in range(3):
        for feature in (0, 17, 31):
            expected = read_record(data.features / "features", layer, feature)
            assert viewer_read(server, cantor_pair(layer, feature)) == expected
    assert get(server, "/features/index.json.gz", {"Range": "bytes=10-5"})[0] == 416
    assert get(server, "/features/layer_0.bin", {"Range": "bytes=99999999-"})[0] == 416
    request = urllib.request.Request(server.url + "/features/index.json.gz", method="HEAD")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["Content-Length"]) == \
            (data.features / "features" / "index.json.gz").stat().st_size
    assert get(server, "/features/../run.json")[0] == 404
    assert get(server, "/features/%2e%2e/run.json")[0] == 404


# --- feature records and search -----------------------------------------------------------------
def test_feature_api_is_the_record_plus_its_place(server, data):
    from qwen_interp.apps.features.sidecar import read_record
    status, record = get_json(server, "/api/feature?dict=clt&layer=1&feature=5")
    assert status == 200
    expected = read_record(data.features / "features", 1, 5)
    assert {k: record[k] for k in expected if k != "coactive"} == \
        {k: v for k, v in expected.items() if k != "coactive"}
    assert (record["dict"], record["layer"], record["feature"]) == ("clt", 1, 5)
    assert [(p["feature"], p["count"]) for p in record["coactive"]] == \
        [(p["feature"], p["count"]) for p in expected["coactive"]]
    assert all(p["layer"] == 1 for p in record["coactive"])
    status, sae = get_json(server, "/api/feature?dict=sae&layer=2&feature=7")
    assert status == 200 and sae["transcoder_id"] == data.release.release
    expected = read_record(data.features / "sae_features", 2, 7)
    expected["coactive"] = [{**p, "layer": 2} for p in expected["coactive"]]
    assert sae == {**expected, "dict": "sae", "layer": 2, "feature": 7}
    for bad, code in (("dict=clt&layer=1&feature=32", 404), ("dict=sae&layer=1&feature=0", 404),
                      ("dict=clt&layer=x&feature=0", 400), ("dict=mlp&layer=0&feature=0", 400)):
        status, body = get_json(server, f"/api/feature?{bad}")
        assert status == code and "\n" not in body["error"], (bad, body)


@pytest.mark.parametrize("query, expected", [
    ("L12/345", ("clt", 12, 345)), ("12/345", ("clt", 12, 345)), ("12:345", ("clt", 12, 345)),
    ("clt 3 17", ("clt", 3, 17)), ("sae 6/7", ("sae", 6, 7)), ("SAE L6 #7", ("sae", 6, 7)),
    ("the cat", None), ("12", None)])
def test_search_by_feature_id(server, query, expected):
    status, answer = get_json(server, "/api/search?q=" + urllib.request.quote(query))
    assert status == 200
    found = [(f["dict"], f["layer"], f["feature"]) for f in answer["features"]]
    assert found == ([expected] if expected else [])


# --- the live model ------------------------------------------------------------------------------
TEXT = "The old dog slept by the door because winter had come"


def reference_max(session, text: str) -> dict[tuple[str, int, int], float]:
    """Each feature's largest activation over the text's positions after the first, from
    circuit-tracer's get_activations (CLT) and SAELens's run_with_cache_with_saes (SAEs)."""
    model = session.model
    tokens = model.ensure_tokenized(text)
    _, clt = model.get_activations(tokens)  # (layers, pos, F)
    out = {}
    for (layer, feature), value in _amax(clt[:, 1:]).items():
        out[("clt", layer, feature)] = value
    for layer, sae in session.saes.items():  # one at a time: a spliced SAE changes later layers
        _, cache = model.run_with_cache_with_saes(tokens.unsqueeze(0), saes=[sae])
        acts = cache[f"{sae.cfg.metadata.hook_name}.hook_sae_acts_post"][0, 1:]
        for feature, value in enumerate(acts.amax(0).tolist()):
            out[("sae", layer, feature)] = value
    return out


def _amax(acts: torch.Tensor) -> dict[tuple[int, int], float]:
    peak = acts.amax(1)
    return {(layer, feature): float(peak[layer, feature])
            for layer in range(peak.shape[0]) for feature in range(peak.shape[1])}


def test_analyze_ranks_features_as_the_tools_compute_them(server, data):
    status, answer = post(server, "/api/analyze", {"text": TEXT, "k": 12})
    assert status == 200
    reference = reference_max(data.session, TEXT)
    ranked = sorted(((v, key) for key, v in reference.items() if v > 0),
                    key=lambda item: (-item[0], item[1]))[:12]
    got = [(f["dict"], f["layer"], f["feature"]) for f in answer["features"]]
    assert got == [key for _, key in ranked]
    for f, (value, _) in zip(answer["features"], ranked, strict=True):
        assert f["max"] == pytest.approx(value, abs=1e-5)
        assert max(f["acts"]) == pytest.approx(value, abs=1e-5)
        assert len(f["acts"]) == len(answer["tokens"])
    assert "".join(answer["tokens"]) == TEXT  # the first (added) token is left out


def test_compare_ranks_by_difference_of_maxima(server, data):
    a, b = TEXT, "Rain fell over quiet hills near the small town of Alder"
    status, answer = post(server, "/api/compare", {"a": a, "b": b, "k": 8})
    assert status == 200
    ref_a, ref_b = reference_max(data.session, a), reference_max(data.session, b)
    diffs = sorted(((abs(ref_a[k] - ref_b[k]), k) for k in ref_a if ref_a[k] != ref_b[k]),
                   key=lambda item: (-item[0], item[1]))[:8]
    assert [(f["dict"], f["layer"], f["feature"]) for f in answer["features"]] == \
        [k for _, k in diffs]
    for f in answer["features"]:
        key = (f["dict"], f["layer"], f["feature"])
        assert f["a"] == pytest.approx(ref_a[key], abs=1e-5)
        assert f["diff"] == pytest.approx(ref_a[key] - ref_b[key], abs=1e-5)


def test_clt_steering_is_circuit_tracers_feature_intervention(server, data):
    """The steered continuation's first token is the argmax of circuit-tracer's own
    feature_intervention with the same edit (set at every position after the first)."""
    model = data.session.model
    prompt, layer, feature, value = "The cat sat on the", 1, 3, 40.0
    status, answer = post(server, "/api/steer", {
        "prompt": prompt, "max_new_tokens": 6,
        "edits": [{"dict": "clt", "layer": layer, "feature": feature, "value": value}]})
    assert status == 200, answer
    tokens = model.ensure_tokenized(prompt)
    logits, _ = model.feature_intervention(tokens, [(layer, slice(1, None), feature, value)])
    first = model.tokenizer.decode([int(logits[0, -1].argmax())])
    plain = model.tokenizer.decode([int(model(tokens.unsqueeze(0))[0, -1].argmax())])
    assert answer["steered"].startswith(first) and answer["unsteered"].startswith(plain)
    assert answer["steered"] != answer["unsteered"]
    assert not model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks  # nothing left behind


def test_sae_steering_is_qwen_scopes_convention(server, data):
    """SAE edits equal greedy generation with h + s * W_dec[f] added at the layer output, a hook
    written here from Qwen-Scope's formula."""
    model = data.session.model
    sae = data.session.saes[2]
    prompt, feature, value = "The cat sat on the", 7, 25.0
    status, answer = post(server, "/api/steer", {
        "prompt": prompt, "max_new_tokens": 6,
        "edits": [{"dict": "sae", "layer": 2, "feature": feature, "value": value}]})
    assert status == 200, answer
    tokens = model.ensure_tokenized(prompt).unsqueeze(0)
    direction = sae.W_dec[feature].detach()

    def add(h, hook):
        return h + value * direction

    with model.hooks(fwd_hooks=[("blocks.2.hook_resid_post", add)]):
        out = model.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False)
    assert answer["steered"] == model.tokenizer.decode(out[0, tokens.shape[1]:].tolist())
    assert answer["steered"] != answer["unsteered"]


@pytest.mark.parametrize("body, fragment", [
    ({"prompt": "x", "edits": []}, "at least one edit"),
    ({"prompt": "x", "edits": [{"dict": "clt", "layer": 0, "feature": 1, "value": 1},
                               {"dict": "sae", "layer": 0, "feature": 1, "value": 1}]},
     "not both"),
    ({"prompt": "x", "edits": [{"dict": "clt", "layer": 0, "feature": 32, "value": 1}]},
     "no clt feature 0/32"),
    ({"prompt": "x", "edits": [{"dict": "sae", "layer": 1, "feature": 0, "value": 1}]},
     "no SAE attached at layer 1"),
    ({"prompt": "x", "edits": [{"dict": "clt", "layer": 0, "feature": 1, "value": "big"}]},
     "value must be a number"),
    ({"prompt": "x", "max_new_tokens": 0, "edits": []}, "max_new_tokens"),
    ({"prompt": "", "edits": [{"dict": "clt", "layer": 0, "feature": 1, "value": 1}]},
     "prompt must be a non-empty string"),
])
def test_bad_steer_requests_get_one_line(server, body, fragment):
    status, answer = post(server, "/api/steer", body)
    assert status == 400 and fragment in answer["error"] and "\n" not in answer["error"]


def test_errors_are_one_json_line(server, data):
    assert post(server, "/api/analyze", b"{not json")[0] == 400
    assert post(server, "/api/analyze", {"text": "hi", "k": 0})[0] == 400
    assert post(server, "/save_graph/x", {})[0] == 501
    assert get_json(server, "/api/nothing")[0] == 404
    from qwen_interp.apps.explorer import Explorer, start_server
    files_only = start_server(Explorer(data.graphs, data.features, None))
    try:
        status, answer = post(files_only, "/api/analyze", {"text": "hi"})
        assert status == 503 and "no live model" in answer["error"]
        assert get_json(files_only, "/api/info")[1]["live"] is False
    finally:
        files_only.stop()



def test_closing_waits_for_every_request_thread_even_on_idle_keep_alive(data):
    """Ctrl-C must end `qwen-interp explore` with exit 0. Request threads still running while the
    interpreter shuts down abort the process inside torch, so closing the server joins them all,
    waking a browser's idle keep-alive connection (which would otherwise block its thread
    forever)."""
    import http.client
    import threading
    import time

    from qwen_interp.apps.explorer import Explorer, start_server
    before = set(threading.enumerate())
    running = start_server(Explorer(data.graphs, data.features, None))
    host, port = running.server.socket.getsockname()[:2]
    browser = http.client.HTTPConnection(host, port, timeout=60)
    browser.request("GET", "/api/info")  # HTTP/1.1: the connection stays open afterwards
    answer = browser.getresponse()
    assert answer.status == 200 and json.loads(answer.read())["live"] is False
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 10
    assert set(threading.enumerate()) - before == set()  # no request thread outlives the close
    browser.close()

# --- the command line ----------------------------------------------------------------------------
def test_explore_refuses_bad_arguments_in_one_line(cli, tmp_path):
    missing = cli("explore", "--graphs", tmp_path / "nope", "--no-model")
    assert missing.returncode == 1 and "--graphs" in missing.stderr and "no such folder" in \
        missing.stderr and missing.stderr.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    no_stats = cli("explore", "--features", empty, "--no-model")
    assert no_stats.returncode == 1 and "features compute" in no_stats.stderr
    both = cli("explore", "--no-model", "--model", "Qwen/Qwen3-1.7B-Base")
    assert both.returncode == 1 and "--no-model" in both.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli("explore", "--no-model", "--graphs", empty, "--port", port)
    assert busy.returncode == 1 and busy.stderr.count("\n") == 1, busy.stderr
