"""circuit-tracer patches "topk-activation", "bluelight-native-clt" and
"first-position-for-strings": the rendered patches apply to the released 0.5.0 source, and the
patched circuit-tracer with every qwen-interp plugin disabled loads BluelightAI's native CLTs
by repo id and gives the same features and graphs as the plugin on the unpatched release; with
the plugin enabled on the patched source, the plugin stands down for those parts.

Model: ``Qwen/Qwen3-0.6B-Base`` (TransformerLens 3.2.1 knows it, so no TransformerLens plugin is
needed), small offline stand-in; CLTs in BluelightAI's native layouts under BluelightAI-style
repo ids in the offline Hub. Everything fp32 on CPU.
"""

from __future__ import annotations

import json
import site

import pytest
import torch
from helpers import SEED_PROMPT, run_python

MODEL = "Qwen/Qwen3-0.6B-Base"
# Not the registered release id: the session's offline Hub keeps that one in the hub layout for
# other tests. The plugin loads these by snapshot folder, the patched release by repo id.
SINGLE = "bluelightai/clt-qwen3-0.6b-base-native-single-file"
# repo id -> write_native arguments: both layouts, config v1/v2, both decoder layouts,
# jumprelu/relu/topk, norm factors (all), layer_indices (layer_weights).
NATIVE = {
    SINGLE: dict(layout="single_file", config_version=1, decoder_layout="input_layer",
                     activation="jumprelu"),
    "bluelightai/clt-qwen3-0.6b-base-native-layer-weights": dict(
        layout="layer_weights", config_version=2, decoder_layout="output_layer",
        activation="relu", layer_indices=[0, 2]),
    "bluelightai/clt-qwen3-0.6b-base-native-topk": dict(
        layout="single_file", config_version=2, decoder_layout="output_layer", activation="topk",
        k=4),
}
NATIVE_TOPK = "bluelightai/clt-qwen3-0.6b-base-native-topk"
# Patched upstream vs plugin: the same modules convert and load, so features, graphs and logits
# agree to float32 round-off (measured: identical).
ATOL = 1e-6


@pytest.fixture(scope="module")
def patched_root(patched_release):
    return str(patched_release("circuit-tracer"))


@pytest.fixture(scope="module")
def native_repos(qwen_offline_hub, qwen_registry):
    """repo id -> snapshot folder of each native CLT, for the small offline 0.6B model."""
    from transformers import AutoConfig

    from qwen_interp.apps.testing.clt_native import random_clt, write_native
    cfg = AutoConfig.from_pretrained(qwen_offline_hub.model(qwen_registry.model(MODEL)))
    out = {}
    for i, (repo, kw) in enumerate(NATIVE.items()):
        n = len(kw.get("layer_indices") or range(cfg.num_hidden_layers))
        raw = random_clt(n, cfg.hidden_size, 32, seed=20 + i)
        out[repo] = str(qwen_offline_hub.snapshot(
            repo, lambda folder, raw=raw, kw=kw: write_native(folder, raw, base_model_name=MODEL,
                                                              **kw)))
    return out


RUN = """
import json, sys, torch
{prelude}
import circuit_tracer
assert circuit_tracer.__file__.startswith({root!r}), circuit_tracer.__file__
from circuit_tracer import ReplacementModel, attribute
CPU = torch.device("cpu")
results = {{}}
for name, ref in {refs!r}.items():
    rm = ReplacementModel.from_pretrained({model!r}, ref, device=CPU, dtype=torch.float32)
    ids = rm.ensure_tokenized({prompt!r})
    logits, acts = rm.get_activations(ids[None])
    _, from_text = rm.get_activations({prompt!r})
    res = dict(ids=ids, logits=logits, acts=acts, acts_from_text=from_text,
               clt=type(rm.transcoders).__module__ + "." + type(rm.transcoders).__name__)
    if name == {first!r}:
        res["intervened"], _ = rm.feature_intervention({prompt!r}, [(1, -1, 0, 5.0)])
        res["generated"], _, _ = rm.feature_intervention_generate(
            {prompt!r}, [(1, -1, 0, 5.0)], max_new_tokens=2, do_sample=False, verbose=False)
    g = attribute(ids, rm, batch_size=256, max_n_logits=3, verbose=False)
    res.update(active=g.active_features, values=g.activation_values, adj=g.adjacency_matrix)
    results[name] = res
torch.save(results, {out!r})
print("ok")
"""


def run_side(root, refs, out, prelude="", env=None, check=True):
    code = RUN.format(prelude=prelude, root=root, refs=refs, model=MODEL, prompt=SEED_PROMPT,
                      first=SINGLE, out=str(out))
    return run_python(code, env=env, check=check)


@pytest.fixture(scope="module")
def both_sides(patched_root, native_repos, tmp_path_factory):
    """The patched release (plugins off, repo ids) and the plugin on the unpatched release
    (snapshot folders: the plugin knows only the registered repo id by name)."""
    tmp = tmp_path_factory.mktemp("sides")
    env = {"CIRCUIT_TRACER_CACHE_DIR": str(tmp / "ct-cache"), "QWEN_INTERP_CACHE": str(tmp / "qi")}
    run_side(patched_root, {r: r for r in NATIVE}, tmp / "patched.pt",
             env={**env, "PYTHONPATH": patched_root, "QWEN_INTERP_PLUGINS": ""})
    run_side(site.getsitepackages()[0], {r: native_repos[r] for r in NATIVE}, tmp / "plugin.pt",
             prelude="import qwen_interp", env=env)
    return torch.load(tmp / "patched.pt"), torch.load(tmp / "plugin.pt"), tmp


def test_rendered_patches_apply_to_the_release(patched_root):
    """(`git apply` ran in the fixture.) The new modules stand alone: no qwen-interp import."""
    from pathlib import Path
    root = Path(patched_root) / "circuit_tracer"
    assert (root / "transcoder/topk_cross_layer_transcoder.py").is_file()
    assert (root / "transcoder/bluelight/native.py").is_file()
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import qwen_interp" not in text and "from qwen_interp" not in text, path
    # Rendered against a tree that has them, the three patches change nothing.
    from qwen_interp.apps import upstream
    again = upstream.render("circuit-tracer", against=Path(patched_root))
    for title in ("Top-k cross-layer transcoders", "Load BluelightAI's native CLT checkpoints",
                  "Same first position for string inputs in every API"):
        section = again.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        assert "(already upstream: nothing to change)" in section and "+++ " not in section


@pytest.mark.subprocess
def test_patched_loads_native_clts_like_the_plugin(both_sides):
    patched, plugin, _ = both_sides
    for repo in NATIVE:
        p, q = patched[repo], plugin[repo]
        assert torch.equal(p["ids"], q["ids"])
        assert (p["acts"] > 0).sum() > 5, repo  # not vacuous
        for key in ("logits", "acts", "values", "adj"):
            torch.testing.assert_close(p[key].to_dense(), q[key].to_dense(), atol=ATOL, rtol=0,
                                       msg=f"{repo} {key}")
        assert torch.equal(p["active"], q["active"]), repo
    assert patched[NATIVE_TOPK]["clt"] == ("circuit_tracer.transcoder.topk_cross_layer_transcoder"
                                           ".TopKCrossLayerTranscoder")
    assert plugin[NATIVE_TOPK]["clt"].endswith("qwen_interp_circuit_tracer.topk"
                                               ".TopKCrossLayerTranscoder")


@pytest.mark.subprocess
def test_patched_string_inputs_get_the_first_position(both_sides):
    patched, plugin, _ = both_sides
    for repo in NATIVE:
        p = patched[repo]
        assert p["ids"][0] == 151643 and p["acts_from_text"].shape[1] == len(p["ids"])
        torch.testing.assert_close(p["acts_from_text"], p["acts"], atol=0, rtol=0)
    p, q = patched[SINGLE], plugin[SINGLE]
    torch.testing.assert_close(p["intervened"], q["intervened"], atol=ATOL, rtol=0)
    assert isinstance(p["generated"], str) and p["generated"] == q["generated"]


@pytest.mark.subprocess
def test_unpatched_release_without_plugins_cannot_load_native(native_repos, tmp_path):
    bare = run_side(site.getsitepackages()[0], {SINGLE: SINGLE}, tmp_path / "x.pt",
                    env={"QWEN_INTERP_PLUGINS": ""}, check=False)
    assert bare.returncode != 0 and "Could not download config.yaml" in bare.stderr


STANDDOWN = """
import dataclasses, json, torch, qwen_interp
import circuit_tracer
assert circuit_tracer.__file__.startswith({root!r})
from circuit_tracer import ReplacementModel
import circuit_tracer.replacement_model.replacement_model_nnsight as nn
import circuit_tracer.replacement_model.replacement_model_transformerlens as tl
rm = ReplacementModel.from_pretrained({model!r}, {folder!r}, device=torch.device("cpu"),
                                      dtype=torch.float32)
def chain(f):  # a method and every function it wraps (functools.wraps sets __wrapped__)
    while f is not None:
        yield f
        f = getattr(f, "__wrapped__", None)
# The plugin's first-position wrapper (its prompt checks are not an upstream part: they stay).
wrapped = [m for cls in (tl.TransformerLensReplacementModel, nn.NNSightReplacementModel)
           for m in ("get_activations", "feature_intervention", "feature_intervention_generate")
           if any(f.__code__.co_name == "first_position_wrapper" for f in chain(getattr(cls, m)))]
checked = [m for cls in (tl.TransformerLensReplacementModel, nn.NNSightReplacementModel)
           for m in ("get_activations", "feature_intervention", "feature_intervention_generate")
           if any(f.__code__.co_name == "prompt_check_wrapper" for f in chain(getattr(cls, m)))]
status = {{s.part: dataclasses.asdict(s) for s in
           qwen_interp.registry().adapters["circuit_tracer"].status()}}
print(json.dumps(dict(status=status, wrapped=wrapped, checked=checked, scan=rm.scan)))
"""


@pytest.mark.subprocess
def test_plugin_stands_down_on_patched_upstream(patched_root, native_repos, tmp_path):
    qi_cache, ct_cache = tmp_path / "qi", tmp_path / "ct"
    # A local folder: the plugin's own loader (folders, formats) runs and hands the native
    # checkpoint to circuit-tracer's loader.
    out = run_python(STANDDOWN.format(root=patched_root, model=MODEL, folder=native_repos[SINGLE]),
                     env={"PYTHONPATH": patched_root, "QWEN_INTERP_CACHE": str(qi_cache),
                          "CIRCUIT_TRACER_CACHE_DIR": str(ct_cache)})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    status = res["status"]
    for part, module in (("native-formats", "circuit_tracer.transcoder.bluelight"),
                         ("topk-clts", "circuit_tracer.transcoder.topk_cross_layer_transcoder")):
        assert status[part]["state"] == "upstream", status
        assert status[part]["detail"] == f"{module}; the plugin delegates to it"
    for cls in ("TransformerLensReplacementModel", "NNSightReplacementModel"):
        # upstream tokenizes strings in all three methods: the wrapper stands down (not bridged)
        assert status[f"first-position:{cls}"]["state"] == "upstream", status
        assert status[f"prompt-checks:{cls}"]["state"] == "bridged", status
    assert res["wrapped"] == []
    assert len(res["checked"]) == 6  # prompt checks are the plugin's own, on upstream too
    assert res["scan"] == native_repos[SINGLE]  # loaded through the plugin's folder loader
    # The conversion was circuit-tracer's, not the plugin's.
    assert any((ct_cache / ".bluelight-native").iterdir())
    assert not (qi_cache / "clt").exists() or not any((qi_cache / "clt").iterdir())


@pytest.mark.subprocess
def test_plugin_still_provides_the_parts_on_the_release():
    out = run_python("""
import dataclasses, json, qwen_interp, circuit_tracer
import circuit_tracer.replacement_model.replacement_model_transformerlens
print(json.dumps({s.part: dataclasses.asdict(s)
                  for s in qwen_interp.registry().adapters["circuit_tracer"].status()}))
""")
    status = json.loads(out.stdout.strip().splitlines()[-1])
    for part in ("native-formats", "topk-clts"):
        assert status[part]["state"] == "bridged", status
        assert status[part]["detail"] == "provided by the plugin"
    first = status["first-position:TransformerLensReplacementModel"]
    assert first["state"] == "bridged", status  # <|endoftext|> first for Qwen string inputs
    assert first["detail"] == ("wrapped ['get_activations', 'feature_intervention', "
                               "'feature_intervention_generate']")


def test_nnsight_mappings_in_both_upstream_layouts():
    """The PyPI build keeps nnsight mappings in ``_REGISTRY``; upstream's main (decoderesearch/
    circuit-tracer 4bb8c0e) has one module-level mapping object per architecture. The adapter
    finds them in both, so it can add (and stand down on) Qwen3 hooks on either."""
    import types

    import circuit_tracer.utils.tl_nnsight_mapping as pinned
    from qwen_interp_circuit_tracer.adapter import nnsight_mappings
    assert "Qwen3ForCausalLM" in nnsight_mappings(pinned)

    head = types.ModuleType("tl_nnsight_mapping")  # the head's layout, with the real class
    head.qwen_3_mapping = pinned._REGISTRY["Qwen3ForCausalLM"]
    head.get_mapping = lambda arch: None
    head.OTHER = {"model_architecture": "not a mapping"}
    assert nnsight_mappings(head) == {"Qwen3ForCausalLM": head.qwen_3_mapping}


ADD_METADATA = """
import json, os, sys
import circuit_tracer
assert circuit_tracer.__file__.startswith(sys.argv[1]), circuit_tracer.__file__
from circuit_tracer.frontend.utils import add_graph_metadata
os.makedirs("graph_files")
try:
    add_graph_metadata({"slug": "seed"}, "graph_files")   # relative, as users type it
except AssertionError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps(json.load(open("graph_files/graph-metadata.json"))))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("patched", [False, True])
def test_graph_metadata_into_a_relative_folder(patched, patched_root, tmp_path):
    """Upstream's add_graph_metadata fails on a relative folder (dirname is ""); the patch
    `graph-files-relative-dir` fixes it. Plugins off, in a fresh interpreter."""
    import importlib.util
    import os
    import subprocess
    import sys
    root = str(patched_root) if patched else os.path.dirname(
        importlib.util.find_spec("circuit_tracer").submodule_search_locations[0])
    env = {**os.environ, "QWEN_INTERP_PLUGINS": "", "PYTHONPATH": root if patched else ""}
    out = subprocess.run([sys.executable, "-c", ADD_METADATA, root], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if patched:
        assert result == {"graphs": [{"slug": "seed"}]}
    else:
        assert result == {"error": "Could not find "}
