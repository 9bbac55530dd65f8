"""circuit-tracer patch ``bounded-attribution-memory``: applied to the released 0.5.0 source, with
every qwen-interp plugin disabled, attribute() builds the same graph as the unpatched release
(fp32, CPU, Qwen3-0.6B-Base test model, which TransformerLens 3.2.1 already knows), through the
patched path, while the public ``compute_attribution_components`` and a direct
``setup_attribution`` return exactly upstream's values (upstream's own
``test_compute_attribution_components`` checks them); with the plugins enabled on the patched
source, the adapter stands down."""

from __future__ import annotations

import json
import site

import pytest
import torch
from helpers import run_python

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
# A spy (the real method runs): which decoder rows attribute()'s own setup produced.
setup, seen = rm.setup_attribution, []
def spy(*args, **kwargs):
    ctx = setup(*args, **kwargs)
    seen.append(type(ctx.decoder_vecs).__name__)
    return ctx
rm.setup_attribution = spy
g = attribute(ids, rm, batch_size=32, max_feature_nodes=60)
rm.setup_attribution = setup
direct = rm.setup_attribution(ids)  # a caller's own: upstream's tensors, patched or not
torch.save({{**{{k: getattr(g, k) for k in ("active_features", "selected_features",
                                          "adjacency_matrix", "logit_probabilities")}},
            **{{"direct." + k: getattr(direct, k) for k in DIRECT}}}}, {out!r})
print("decoder rows:", seen, type(direct.decoder_vecs).__name__)
"""
# The AttributionContext fields a direct setup_attribution() fills from the transcoder.
DIRECT = ("activation_matrix", "error_vectors", "encoder_vecs", "decoder_vecs",
          "encoder_to_decoder_map", "decoder_locations")
GRAPH = GRAPH.replace("import torch, circuit_tracer\n",
                      f"import torch, circuit_tracer\nDIRECT = {DIRECT!r}\n", 1)


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

    from qwen_interp.apps import upstream
    text = upstream.render("circuit-tracer")
    assert "## attribute(): bounded GPU memory, same graph" in text
    for name in ("active_decoders.py", "bounded_influences.py", "shared_patterns.py"):
        assert f"--- /dev/null\n+++ b/circuit_tracer/attribution/{name}" in text
        source = (Path(qwen_interp_circuit_tracer.__file__).parent / name).read_text()
        assert "".join(f"+{line}\n" for line in source.splitlines()[:20]) in text


@pytest.mark.slow
@pytest.mark.subprocess
def test_patched_release_builds_upstreams_graph_without_plugins(patched_root, clt_dir, tmp_path):
    env = {"QWEN_INTERP_PLUGINS": ""}
    patched = run_python(GRAPH.format(root=patched_root, clt=clt_dir, model=MODEL,
                                      out=str(tmp_path / "patched.pt")),
                         env={**env, "PYTHONPATH": patched_root})
    bare = run_python(GRAPH.format(root=site.getsitepackages()[0], clt=clt_dir, model=MODEL,
                                   out=str(tmp_path / "bare.pt")), env=env)
    # attribute() takes the bounded path; a direct setup_attribution() keeps upstream's tensors.
    assert "decoder rows: ['ActiveDecoders'] Tensor" in patched.stdout
    assert "decoder rows: ['Tensor'] Tensor" in bare.stdout
    ours, ref = torch.load(tmp_path / "patched.pt"), torch.load(tmp_path / "bare.pt")
    for key in ("active_features", "selected_features", "logit_probabilities"):
        assert torch.equal(ours[key], ref[key]), key
    for key in DIRECT:
        a, b = ours["direct." + key], ref["direct." + key]
        a, b = (a.to_dense(), b.to_dense()) if a.is_sparse else (a, b)
        assert a.shape == b.shape and torch.equal(a, b), key
    assert ref["direct.decoder_vecs"].shape[0] > ref["direct.encoder_vecs"].shape[0] > 0
    assert len(ref["selected_features"]) == 60 < len(ref["active_features"])  # ranking ran
    A, B = ours["adjacency_matrix"], ref["adjacency_matrix"]
    assert A.shape == B.shape and B.abs().max() > 0.1
    assert (A - B).abs().max() <= RTOL * B.abs().max()


@pytest.mark.subprocess
def test_attribution_adapter_stands_down_on_patched_release(patched_root):
    out = run_python("""
import dataclasses, json, qwen_interp
import circuit_tracer.transcoder.cross_layer_transcoder as clt
method = clt.CrossLayerTranscoder.compute_attribution_components
print(json.dumps([{s.part: dataclasses.asdict(s) for s in
                   qwen_interp.registry().adapters["circuit_tracer_attribution"].status()},
                  not hasattr(method, "__qwen_interp_original__")]))
""", env={"PYTHONPATH": patched_root})
    status, untouched = json.loads(out.stdout.strip().splitlines()[-1])
    assert status["bounded-components"] == {
        "adapter": "circuit_tracer_attribution", "part": "bounded-components",
        "state": "upstream", "detail": "circuit_tracer.attribution.active_decoders; stood down"}
    assert not any(s["state"] == "bridged" for s in status.values()), status
    assert untouched


# The assertions of upstream's own test_compute_attribution_components (circuit-tracer,
# tests/test_cross_layer_transcoder.py and tests/transcoder/test_cross_layer_transcoder.py, the
# same function), on a CLT written as its create_test_clt_files fixture writes one; then, on the
# patched source, attribute()'s bounded variant against that public return value.
CONTRACT = """
import json, os, torch
from safetensors.torch import save_file
import circuit_tracer
assert circuit_tracer.__file__.startswith({root!r}), circuit_tracer.__file__
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
torch.manual_seed(42)
n_layers, d_model, d_transcoder, clt_path = 4, 128, 512, {clt_path!r}
for i in range(n_layers):
    save_file({{f"W_enc_{{i}}": torch.randn(d_transcoder, d_model),
               f"b_enc_{{i}}": torch.randn(d_transcoder), f"b_dec_{{i}}": torch.randn(d_model)}},
              os.path.join(clt_path, f"W_enc_{{i}}.safetensors"))
    save_file({{f"W_dec_{{i}}": torch.randn(d_transcoder, n_layers - i, d_model)}},
              os.path.join(clt_path, f"W_dec_{{i}}.safetensors"))
if {skip_connection!r}:
    save_file({{"W_skip": torch.randn(d_model, d_model)}},
              os.path.join(clt_path, "W_skip.safetensors"))
clt = load_clt(clt_path, device=torch.device("cpu"), lazy_encoder=True, lazy_decoder=True)
n_pos = 10
inputs = torch.randn(clt.n_layers, n_pos, clt.d_model, dtype=clt.b_enc.dtype)
components = clt.compute_attribution_components(inputs, zero_positions=slice(0, 1))

# upstream's assertions
for key in ("activation_matrix", "reconstruction", "encoder_vecs", "decoder_vecs",
            "encoder_to_decoder_map", "decoder_locations"):
    assert key in components, key
act_matrix = components["activation_matrix"]
assert act_matrix.is_sparse
assert act_matrix.shape == (clt.n_layers, n_pos, clt.d_transcoder)
reconstruction = components["reconstruction"]
assert reconstruction.shape == (clt.n_layers, n_pos, clt.d_model)
assert torch.allclose(reconstruction[:, 1:], clt(inputs)[:, 1:])
n_active_encoders = act_matrix._nnz()
assert components["encoder_vecs"].shape[0] == n_active_encoders
assert components["decoder_vecs"].shape[0] >= n_active_encoders
assert components["decoder_vecs"].shape[1] == clt.d_model
assert components["decoder_locations"].shape[0] == 2
# (upstream's file stops here; the rest of the output of the public method, as a tensor)
assert type(components["decoder_vecs"]) is torch.Tensor
assert components["decoder_locations"].shape[1] == components["decoder_vecs"].shape[0]
assert components["encoder_to_decoder_map"].shape == (components["decoder_vecs"].shape[0],)

out = {{"active": n_active_encoders, "rows": components["decoder_vecs"].shape[0],
        "bounded": hasattr(clt, "compute_bounded_attribution_components")}}
if out["bounded"]:
    bounded = clt.compute_bounded_attribution_components(inputs, zero_positions=slice(0, 1))
    out["bounded_rows"] = type(bounded["decoder_vecs"]).__name__
    assert torch.equal(bounded["activation_matrix"].to_dense(), act_matrix.to_dense())
    assert torch.equal(bounded["encoder_vecs"], components["encoder_vecs"])
    assert torch.equal(bounded["reconstruction"], reconstruction)  # bit for bit
    locations, vecs, node_ids = bounded["decoder_vecs"].occurrence_rows()
    assert torch.equal(locations, components["decoder_locations"])
    assert torch.equal(vecs, components["decoder_vecs"])
    assert torch.equal(node_ids, components["encoder_to_decoder_map"])
print(json.dumps(out))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("skip_connection", [False, True])
@pytest.mark.parametrize("source", ["release", "patched"])
def test_compute_attribution_components_keeps_upstreams_contract(source, skip_connection,
                                                                 patched_root, tmp_path):
    root = patched_root if source == "patched" else site.getsitepackages()[0]
    env = {"QWEN_INTERP_PLUGINS": ""}
    if source == "patched":
        env["PYTHONPATH"] = patched_root
    proc = run_python(CONTRACT.format(root=root, clt_path=str(tmp_path),
                                      skip_connection=skip_connection), env=env)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rows"] > out["active"] > 0  # cross-layer rows: more decoder rows than features
    if source == "patched":
        assert out["bounded"] and out["bounded_rows"] == "ActiveDecoders", out
    else:
        assert not out["bounded"]
