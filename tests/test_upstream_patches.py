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
def patched_transformer_lens(tmp_path_factory):
    """The released transformer-lens source with the rendered patch applied by `git apply`."""
    root = upstream.copy_released_source("transformer-lens", tmp_path_factory.mktemp("tl"))
    diff = root.parent / "tl.patch"
    text = upstream.render("transformer-lens")
    diff.write_text(text)
    proc = subprocess.run(["git", "apply", "--verbose", str(diff)], cwd=root, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Applied patch transformer_lens/supported_models.py cleanly" in proc.stderr
    return root


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


def test_cli_renders_patches():
    import sys
    proc = subprocess.run([sys.executable, "-m", "qwen_interp.cli", "patches", "render",
                           "transformer-lens"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("## Add the Qwen3 Base checkpoints")
