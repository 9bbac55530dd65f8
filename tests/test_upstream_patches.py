"""Upstream patches: each applies cleanly to the pinned release's source, and the patched
upstream — with every qwen-interp plugin disabled — does what the plugin did. With the patch
upstream, the plugin stands down by itself."""

from __future__ import annotations

import json
import subprocess
import pytest

from helpers import run_python
from qwen_interp.apps import upstream

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


@pytest.mark.slow
@pytest.mark.subprocess
def test_patched_transformer_lens_loads_qwen3_base_without_plugins(
        patched_transformer_lens, qwen_offline_hub, qwen_registry):
    for repo in DENSE:
        qwen_offline_hub.model(qwen_registry.model(repo))
    local_dir = qwen_offline_hub.snapshot_path("Qwen/Qwen3-4B-Base")
    out = run_python(f"""
import json, torch, transformer_lens
from transformer_lens import HookedTransformer
from transformers import AutoModelForCausalLM
assert transformer_lens.__file__.startswith(
    {str(patched_transformer_lens)!r}), transformer_lens.__file__
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


@pytest.mark.subprocess
def test_plugin_stands_down_on_patched_upstream(patched_transformer_lens):
    out = run_python("""
import dataclasses, json, qwen_interp, transformer_lens
print(json.dumps({s.part: dataclasses.asdict(s)
                  for s in qwen_interp.registry().adapters["transformerlens"].status()}))
""", env={"PYTHONPATH": str(patched_transformer_lens)})
    status = json.loads(out.stdout.strip().splitlines()[-1])
    names = dict(section.split(": ", 1)
                 for section in status["model-names"]["detail"].split("; "))
    assert not set(DENSE) & set(names.get("added", "").split(", ")), status
    assert set(DENSE) <= set(names["already upstream"].split(", ")), status
    assert status["local-dirs"]["state"] == "upstream", status  # upstream accepts them


def test_every_project_renders_a_change_for_its_pinned_release():
    for name in upstream.projects():
        text = upstream.render(name)
        assert "(already upstream" not in text, name  # the pinned releases all need the change
        assert text.count("+++ b/") >= 1, name


def test_cli_patches_list(tmp_path, cli):
    proc = cli("patches", "list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, proj in upstream.projects().items():
        for patch in proj.patches:
            assert any(line.startswith(f"{name} {proj.pinned}") and patch.name in line
                       for line in lines), (name, patch.name)


def test_cli_renders_patches(tmp_path, cli):
    proc = cli("patches", "render", "transformer-lens", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("## Add the Qwen3 Base checkpoints")
    assert "#1075" in proc.stdout  # the PR text names the upstream PR it follows
    assert list(tmp_path.iterdir()) == []  # render writes nothing


def _git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          capture_output=True, text=True, check=True)


@pytest.mark.parametrize("distribution", ["transformer-lens", "circuit-tracer", "sae-lens"])
def test_render_against_a_checkout_applies_there(distribution, tmp_path, cli):
    """`--against` a git checkout (here one made from the installed pinned release's files, as
    CI has no network): the rendered diff passes `git apply --check` in it, `patches check`
    agrees, and the checkout is left unchanged."""
    checkout = tmp_path / "checkout"
    upstream.copy_released_source(distribution, checkout)
    _git("init", "-q", cwd=checkout)
    _git("add", "-A", cwd=checkout)
    _git("commit", "-qm", "release", cwd=checkout)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = cli("patches", "render", distribution, "--against", str(checkout), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == upstream.render(distribution) + "\n"  # same files, same diffs
    assert _git("status", "--porcelain", cwd=checkout).stdout == ""
    diff = tmp_path / "pr.patch"
    diff.write_text(proc.stdout)
    check = subprocess.run(["git", "apply", "--check", str(diff)], cwd=checkout,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = cli("patches", "check", distribution, "--against", str(checkout), cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    patches = upstream.project(distribution).patches
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == [p.name for p in patches]
    assert all(line.split()[1] == "ok" for line in proc.stdout.splitlines()[1:]), proc.stdout
    # Applied, the checkout already has every change: rendering again drops each patch.
    subprocess.run(["git", "apply", str(diff)], cwd=checkout, check=True)
    again = upstream.rendered(distribution, checkout)
    assert [r.diff for r in again] == [""] * len(patches)
    assert all(r.note.startswith("already upstream") for r in again), [r.note for r in again]


@pytest.mark.subprocess
def test_patched_transformer_lens_names_are_in_upstreams_test_order(patched_transformer_lens):
    """TransformerLens's tests/unit/test_supported_models.py checks both lists are sorted with
    ``key=str.casefold``; the patch inserts every name where that order puts it."""
    out = run_python("""
import json
from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES
names, keys = list(OFFICIAL_MODEL_NAMES), list(MODEL_ALIASES)
print(json.dumps([names == sorted(names, key=str.casefold), keys == sorted(keys, key=str.casefold),
                  [n for n in names if n.startswith("Qwen/Qwen3-") and n.endswith("-Base")]]))
""", env={"PYTHONPATH": str(patched_transformer_lens), "QWEN_INTERP_PLUGINS": ""})
    names_sorted, aliases_sorted, base = json.loads(out.stdout.strip().splitlines()[-1])
    assert names_sorted and aliases_sorted
    assert set(base) == set(DENSE) | {"Qwen/Qwen3-30B-A3B-Base"}, base


def test_insert_sorted_places_each_name_among_multi_line_entries():
    from qwen_interp.upstream_patches import insert_sorted
    from qwen_interp_transformerlens.upstream_patches import ALIASES_OPENER, _entry_key
    text = (ALIASES_OPENER + '    "a/B": ["b"],\n    "a/d": [\n        "d",\n    ],\n'
            '    "a/F": ["f"],\n}\nAFTER = 1\n')
    out = insert_sorted(text, ALIASES_OPENER, {"a/e": '    "a/e": ["e"],\n',
                                               "a/z": '    "a/z": ["z"],\n',
                                               "a/a": '    "a/a": ["a"],\n'}, _entry_key, "x.py")
    keys = [_entry_key(line) for line in out.splitlines(keepends=True) if _entry_key(line)]
    assert keys == ["a/a", "a/B", "a/d", "a/e", "a/F", "a/z"]
    assert ('        "d",\n    ],\n    "a/e"' in out
            and out.endswith('"a/z": ["z"],\n}\nAFTER = 1\n'))


def test_render_against_a_folder_that_is_no_checkout_is_one_clear_error(tmp_path, cli):
    proc = cli("patches", "render", "transformer-lens", "--against", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"qwen-interp patches: error: --against {tmp_path}: not a checkout of "
        "TransformerLensOrg/TransformerLens (expected the repository root, holding the "
        "transformer_lens/ folder)"]


def test_patch_for_code_the_target_lacks_is_not_applicable(tmp_path):
    """An SAELens without the Qwen-Scope loader (before decoderesearch/SAELens#677): nothing to
    propose, and the render says why rather than "already upstream"."""
    loaders = tmp_path / "sae_lens" / "loading" / "pretrained_sae_loaders.py"
    loaders.parent.mkdir(parents=True)
    loaders.write_text("def sae_lens_huggingface_loader():\n    pass\n")
    text = upstream.render("sae-lens", tmp_path)
    assert "(not applicable to this tree: sae_lens/loading/pretrained_sae_loaders.py has no " \
           "qwen_scope_sae_huggingface_loader" in text
    assert "+++ " not in text and "already upstream" not in text


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


@pytest.mark.slow
@pytest.mark.subprocess
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


@pytest.mark.slow
@pytest.mark.subprocess
def test_patched_sae_lens_refuses_malicious_qwen_scope_pickle_without_plugins(tmp_path,
                                                                             patched_release):
    import site

    import torch

    from qwen_interp.apps.testing.hub import OfflineHub
    hf_home, marker = tmp_path / "hf", tmp_path / "evil-ran"
    OfflineHub(hf_home).snapshot(
        "Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50", lambda folder: torch.save(
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


@pytest.mark.subprocess
def test_circuit_tracer_plugin_stands_down_on_patched_upstream(patched_release):
    root = str(patched_release("circuit-tracer"))
    out = run_python("""
import dataclasses, json, qwen_interp
import circuit_tracer.utils.tl_nnsight_mapping as m
before = dict(m._REGISTRY["Qwen3ForCausalLM"].feature_hook_mapping)
status = {s.part: dataclasses.asdict(s) for s in
          qwen_interp.registry().adapters["circuit_tracer"].status()}
qwen_interp.deactivate()
print(json.dumps([status, before == dict(m._REGISTRY["Qwen3ForCausalLM"].feature_hook_mapping)]))
""", env={"PYTHONPATH": root})
    status, unchanged = json.loads(out.stdout.strip().splitlines()[-1])
    mapping = status["nnsight-mapping:Qwen3ForCausalLM"]
    assert mapping["state"] == "upstream", status  # added nothing: stood down
    assert mapping["detail"] == ("upstream already maps ['hook_mlp_out', 'hook_resid_mid', "
                                 "'mlp.hook_in', 'mlp.hook_out']")
    assert unchanged


@pytest.mark.slow
@pytest.mark.subprocess
def test_saelens_plugin_says_when_upstream_reads_weights_only(patched_release):
    root = str(patched_release("sae-lens"))
    probe = """
import dataclasses, json, qwen_interp, sae_lens
print(json.dumps({s.part: dataclasses.asdict(s)
                  for s in qwen_interp.registry().adapters["saelens"].status()}))
"""
    patched = json.loads(
        run_python(probe, env={"PYTHONPATH": root}).stdout.strip().splitlines()[-1])
    bare = json.loads(run_python(probe).stdout.strip().splitlines()[-1])
    assert patched["weights"]["state"] == bare["weights"]["state"] == "bridged"
    assert "already weights_only (upstream fix)" in patched["weights"]["detail"], patched
    assert "replaces SAELens's torch.load reader" in bare["weights"]["detail"], bare
