"""circuit-tracer patch ``bounded-attribution-memory``: applied to the released 0.5.0 source, with
every qwen-interp plugin disabled, attribute() builds the same graph as the unpatched release
(fp32, CPU, Qwen3-0.6B-Base test model, which TransformerLens 3.2.1 already knows), through the
patched path; with the plugins enabled on the patched source, the adapter stands down."""

from __future__ import annotations

import json
import site

import pytest
import torch
from conftest import run_python

MODEL = "Qwen/Qwen3-0.6B-Base"
RTOL = 1e-5  # |dA| <= RTOL * max|A|, fp32 (summation order only)

GRAPH = """
import torch, circuit_tracer
assert circuit_tracer.__file__.startswith({root!r}), circuit_tracer.__file__
from circuit_tracer import ReplacementModel, attribute
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
cpu = torch.device("cpu")
clt = load_clt({clt!r}, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
               device=cpu, dtype=torch.float32)
rm = ReplacementModel.from_pretrained_and_transcoders({model!r}, clt, device=cpu,
                                                      dtype=torch.float32)
ids = torch.tensor([151643, 17417, 25, 576, 4767, 315, 279, 3639, 4180, 304, 220, 17, 15, 16, 15,
                    572])
g = attribute(ids, rm, batch_size=32, max_feature_nodes=60)
torch.save({{k: getattr(g, k) for k in ("active_features", "selected_features",
                                        "adjacency_matrix", "logit_probabilities")}}, {out!r})
print("decoder rows:", type(rm.setup_attribution(ids).decoder_vecs).__name__)
"""


@pytest.fixture(scope="module")
def clt_dir(qwen_offline_hub, qwen_registry):
    release = qwen_registry.transcoder_release("bluelight-qwen3-0.6b")
    qwen_offline_hub.model(qwen_registry.model(MODEL))
    return str(qwen_offline_hub.transcoder(release, qwen_registry.model(MODEL)))


@pytest.fixture(scope="module")
def patched_root(patched_release):
    return str(patched_release("circuit-tracer"))


def test_render_has_the_patch_and_ships_the_plugin_modules_unchanged():
    import qwen_interp_circuit_tracer
    from pathlib import Path

    from qwen_interp import upstream
    text = upstream.render("circuit-tracer")
    assert "## attribute(): bounded GPU memory, same graph" in text
    for name in ("active_decoders.py", "bounded_influences.py", "shared_patterns.py"):
        assert f"--- /dev/null\n+++ b/circuit_tracer/attribution/{name}" in text
        source = (Path(qwen_interp_circuit_tracer.__file__).parent / name).read_text()
        assert "".join(f"+{line}\n" for line in source.splitlines()[:20]) in text


def test_patched_release_builds_upstreams_graph_without_plugins(patched_root, clt_dir, tmp_path):
    env = {"QWEN_INTERP_PLUGINS": ""}
    patched = run_python(GRAPH.format(root=patched_root, clt=clt_dir, model=MODEL,
                                      out=str(tmp_path / "patched.pt")),
                         env={**env, "PYTHONPATH": patched_root})
    bare = run_python(GRAPH.format(root=site.getsitepackages()[0], clt=clt_dir, model=MODEL,
                                   out=str(tmp_path / "bare.pt")), env=env)
    assert "decoder rows: ActiveDecoders" in patched.stdout
    assert "decoder rows: Tensor" in bare.stdout
    ours, ref = torch.load(tmp_path / "patched.pt"), torch.load(tmp_path / "bare.pt")
    for key in ("active_features", "selected_features", "logit_probabilities"):
        assert torch.equal(ours[key], ref[key]), key
    assert len(ref["selected_features"]) == 60 < len(ref["active_features"])  # ranking ran
    A, B = ours["adjacency_matrix"], ref["adjacency_matrix"]
    assert A.shape == B.shape and B.abs().max() > 0.1
    assert (A - B).abs().max() <= RTOL * B.abs().max()


def test_attribution_adapter_stands_down_on_patched_release(patched_root):
    out = run_python("""
import json, qwen_interp
import circuit_tracer.transcoder.cross_layer_transcoder as clt
method = clt.CrossLayerTranscoder.compute_attribution_components
print(json.dumps([qwen_interp.registry().adapters["circuit_tracer_attribution"].status(),
                  not hasattr(method, "__qwen_interp_original__")]))
""", env={"PYTHONPATH": patched_root})
    status, untouched = json.loads(out.stdout.strip().splitlines()[-1])
    assert any("already upstream" in line and "stood down" in line for line in status), status
    assert untouched
