"""Upstream patches: each applies cleanly to the pinned release's source, and the patched
upstream — with every qwen-interp plugin disabled — does what the plugin did. With the patch
upstream, the plugin stands down by itself."""

from __future__ import annotations

import json
import subprocess
import pytest

from conftest import run_python
from qwen_interp import upstream

DENSE = ["Qwen/Qwen3-0.6B-Base", "Qwen/Qwen3-1.7B-Base", "Qwen/Qwen3-4B-Base",
         "Qwen/Qwen3-8B-Base", "Qwen/Qwen3-14B-Base"]


@pytest.fixture(scope="module")
def patched_transformer_lens(patched_release):
    return patched_release("transformer-lens")


def test_render_lists_every_patch_with_a_diff():
    text = upstream.render("transformer-lens")
    for patch in upstream.project("transformer-lens").patches:
        assert f"## {patch.title}" in text
    assert '+    "Qwen/Qwen3-1.7B-Base",' in text
    assert '+    "Qwen/Qwen3-0.6B-Base",' not in text  # already upstream
    assert "+++ b/transformer_lens/loading_from_pretrained.py" in text


def test_patched_transformer_lens_loads_qwen3_base_without_plugins(
        patched_transformer_lens, qwen_offline_hub, qwen_registry):
    for repo in DENSE:
        qwen_offline_hub.model(qwen_registry.model(repo))
    local_dir = qwen_offline_hub.snapshot_path("Qwen/Qwen3-4B-Base")
    out = run_python(f"""
import json, torch, transformer_lens
from transformer_lens import HookedTransformer
from transformers import AutoModelForCausalLM
assert transformer_lens.__file__.startswith({str(patched_transformer_lens)!r}), transformer_lens.__file__
ids = torch.tensor([[17417, 25, 576, 4767, 315]])
diffs = {{}}
for name in {DENSE!r} + [{str(local_dir)!r}]:
    tl = HookedTransformer.from_pretrained_no_processing(name, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    with torch.no_grad():
        diffs[name] = (tl(ids) - hf(ids).logits).abs().max().item()
print(json.dumps(diffs))
""", env={"PYTHONPATH": str(patched_transformer_lens), "QWEN_INTERP_PLUGINS": ""})
    diffs = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(diffs) == len(DENSE) + 1
    assert max(diffs.values()) <= 1e-4, diffs


def test_plugin_stands_down_on_patched_upstream(patched_transformer_lens):
    out = run_python("""
import json, qwen_interp, transformer_lens
print(json.dumps(qwen_interp.registry().adapters["transformerlens"].status()))
""", env={"PYTHONPATH": str(patched_transformer_lens)})
    status = json.loads(out.stdout.strip().splitlines()[-1])
    assert not any(line.startswith("added model names") and "-Base" in line
                   and any(repo in line for repo in DENSE) for line in status), status
    assert any(line.startswith("already upstream") and all(r in line for r in DENSE)
               for line in status), status
    assert "local checkpoint directories: upstream already accepts them" in status


def test_every_project_renders_a_change_for_its_pinned_release():
    from qwen_interp_patches import projects
    for name, proj in projects().items():
        text = upstream.render(name)
        assert "(already upstream" not in text, name  # the pinned releases all need the change
        assert text.count("+++ b/") >= 1, name


def test_cli_renders_patches():
    import sys
    proc = subprocess.run([sys.executable, "-m", "qwen_interp.cli", "patches", "render",
                           "transformer-lens"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("## Add the Qwen3 Base checkpoints")


NNSIGHT_CLT = """
import json, sys, torch
{prelude}
import circuit_tracer
assert circuit_tracer.__file__.startswith({root!r}), circuit_tracer.__file__
from circuit_tracer import ReplacementModel
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
clt = load_clt({clt!r}, feature_input_hook="hook_resid_mid", feature_output_hook="hook_mlp_out",
               device=torch.device("cpu"), dtype=torch.float32)
rm = ReplacementModel.from_pretrained_and_transcoders(
    "Qwen/Qwen3-1.7B-Base", clt, backend="nnsight", device=torch.device("cpu"), dtype=torch.float32)
_, acts = rm.get_activations(torch.tensor([151643, 17417, 25, 576, 4767, 315]))
print(json.dumps(acts.tolist()))
"""


def test_patched_circuit_tracer_nnsight_resid_mid_without_plugins(patched_release, qwen_offline_hub,
                                                                   qwen_registry):
    import site
    release = qwen_registry.transcoder_release("bluelight-qwen3-1.7b")
    clt = str(qwen_offline_hub.transcoder(release, qwen_registry.model(release.model_repo_id)))
    root = str(patched_release("circuit-tracer"))
    patched = run_python(NNSIGHT_CLT.format(prelude="", root=root, clt=clt),
                         env={"PYTHONPATH": root, "QWEN_INTERP_PLUGINS": ""})
    installed = site.getsitepackages()[0]
    # What the plugin does on the unpatched release gives the same features ...
    plugin = run_python(NNSIGHT_CLT.format(prelude="import qwen_interp", root=installed, clt=clt))
    acts = json.loads(patched.stdout.strip().splitlines()[-1])
    assert acts == json.loads(plugin.stdout.strip().splitlines()[-1])
    assert any(v > 0 for layer in acts for pos in layer for v in pos)
    # ... and the unpatched release without the plugin cannot run this transcoder.
    bare = run_python(NNSIGHT_CLT.format(prelude="", root=installed, clt=clt),
                      env={"QWEN_INTERP_PLUGINS": ""}, check=False)
    assert bare.returncode != 0 and "hook_resid_mid" in bare.stderr


MALICIOUS_SAE = """
import os, sys
{prelude}
import sae_lens
assert sae_lens.__file__.startswith({root!r}), sae_lens.__file__
from sae_lens import SAE
try:
    SAE.from_pretrained("qwen-scope-3-1.7b-base-w32k-l50", "layer0", device="cpu")
except Exception as exc:
    print("refused:", type(exc).__name__)
print("payload ran:", os.path.exists({marker!r}))
"""


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_patched_sae_lens_refuses_malicious_qwen_scope_pickle_without_plugins(tmp_path,
                                                                             patched_release):
    import site

    import torch

    from qwen_interp.testing.hub import OfflineHub
    hf_home, marker = tmp_path / "hf", tmp_path / "evil-ran"
    OfflineHub(hf_home).snapshot("Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50", lambda folder: torch.save(
        {"W_enc": _Payload(marker), "W_dec": torch.zeros(1), "b_enc": torch.zeros(1),
         "b_dec": torch.zeros(1)}, folder / "layer0.sae.pt"))
    env = {"HF_HOME": str(hf_home), "QWEN_INTERP_PLUGINS": "",
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # torch's escape hatch, as some users set it
    root = str(patched_release("sae-lens"))
    patched = run_python(MALICIOUS_SAE.format(prelude="", root=root, marker=str(marker)),
                         env={**env, "PYTHONPATH": root})
    assert "refused: UnpicklingError" in patched.stdout
    assert "payload ran: False" in patched.stdout and not marker.exists()
    # Control: the unpatched release runs the payload under the same conditions.
    bare = run_python(MALICIOUS_SAE.format(prelude="", root=site.getsitepackages()[0],
                                           marker=str(marker)), env=env)
    assert "payload ran: True" in bare.stdout


def test_circuit_tracer_plugin_stands_down_on_patched_upstream(patched_release):
    root = str(patched_release("circuit-tracer"))
    out = run_python("""
import json, qwen_interp
import circuit_tracer.utils.tl_nnsight_mapping as m
before = dict(m._REGISTRY["Qwen3ForCausalLM"].feature_hook_mapping)
status = qwen_interp.registry().adapters["circuit_tracer"].status()
qwen_interp.deactivate()
print(json.dumps([status, before == dict(m._REGISTRY["Qwen3ForCausalLM"].feature_hook_mapping)]))
""", env={"PYTHONPATH": root})
    status, unchanged = json.loads(out.stdout.strip().splitlines()[-1])
    assert "nnsight Qwen3ForCausalLM: added nothing; upstream already maps ['hook_mlp_out', " \
           "'hook_resid_mid', 'mlp.hook_in', 'mlp.hook_out'] (stood down)" in status
    assert unchanged


def test_saelens_plugin_says_when_upstream_reads_weights_only(patched_release):
    root = str(patched_release("sae-lens"))
    probe = """
import json, qwen_interp, sae_lens
print(json.dumps(qwen_interp.registry().adapters["saelens"].status()))
"""
    patched = json.loads(run_python(probe, env={"PYTHONPATH": root}).stdout.strip().splitlines()[-1])
    bare = json.loads(run_python(probe).stdout.strip().splitlines()[-1])
    assert any("already weights_only (upstream fix)" in line for line in patched), patched
    assert any("replaces SAELens's torch.load reader" in line for line in bare), bare
