"""The TransformerLens ``qwen3-moe`` upstream patch: rendered from the plugin's own code, it
applies cleanly to the released TL 3.2.1 source, and the patched TL — with every qwen-interp
plugin disabled — loads Qwen/Qwen3-30B-A3B-Base (small offline checkpoint, real MoE flags) by
repo id and matches HF transformers in fp32. On the patched TL the plugin's MoE part stands down."""

from __future__ import annotations

import inspect
import json
import textwrap

import pytest

from helpers import run_python

MOE = "Qwen/Qwen3-30B-A3B-Base"
TITLE = "Qwen3-MoE (Qwen3MoeForCausalLM) in HookedTransformer"
TOL = 1e-4


@pytest.fixture(scope="module")
def patched_tl(patched_release):
    return str(patched_release("transformer-lens"))


@pytest.fixture(scope="module")
def moe_checkpoint(qwen_offline_hub, qwen_registry):
    return qwen_offline_hub.model(qwen_registry.model(MOE))


def test_cli_render_includes_the_moe_patch_cut_from_the_plugin(cli):
    from qwen_interp_transformerlens import moe
    proc = cli("patches", "render", "transformer-lens")
    assert proc.returncode == 0, proc.stderr
    assert f"## {TITLE}" in proc.stdout
    # The added code is the plugin's, line for line (here: the MoE block's forward).
    forward = textwrap.dedent(inspect.getsource(moe.moe_classes()[1].forward))
    added = "\n".join(line[1:] for line in proc.stdout.splitlines() if line.startswith("+"))
    assert textwrap.indent(forward, "    ").rstrip() in added
    assert '+    "Qwen/Qwen3-30B-A3B-Base",' in proc.stdout


COMPARE = """
import json, sys, torch
import transformer_lens
from transformer_lens import HookedTransformer
from transformers import AutoModelForCausalLM
assert transformer_lens.__file__.startswith({root!r}), transformer_lens.__file__
assert "qwen_interp" not in sys.modules
ids = torch.tensor([[17417, 25, 576, 4767, 315, 279, 3639, 4180, 304, 220, 17, 15, 16, 15, 572]])
hf = AutoModelForCausalLM.from_pretrained({name!r}, dtype=torch.float32)
last = {{}}
hf.model.layers[-1].register_forward_hook(
    lambda m, a, o: last.setdefault("x", o[0] if isinstance(o, tuple) else o))
with torch.no_grad():
    ref = hf(ids, output_hidden_states=True, output_router_logits=True)
resid = [*ref.hidden_states[1:-1], last["x"]]

tl = HookedTransformer.from_pretrained({name!r}, device="cpu", dtype=torch.float32)
mlp = tl.blocks[0].mlp
assert (type(mlp).__name__, type(mlp).__module__) == (
    "Qwen3MoE", "transformer_lens.components.mlps.moe")
with torch.no_grad():
    logits, cache = tl.run_with_cache(ids)
raw = HookedTransformer.from_pretrained_no_processing({name!r}, device="cpu", dtype=torch.float32)
with torch.no_grad():
    raw_logits = raw(ids)
n = tl.cfg.num_experts
print(json.dumps({{
    "logprobs": (logits.log_softmax(-1) - ref.logits.log_softmax(-1)).abs().max().item(),
    "logits_no_processing": (raw_logits - ref.logits).abs().max().item(),
    "resid_post": max((cache[f"blocks.{{l}}.hook_resid_post"] - r).abs().max().item()
                      for l, r in enumerate(resid)),
    "router_logits": max((cache[f"blocks.{{l}}.mlp.hook_router_logits"].reshape(-1, n) - r)
                         .abs().max().item() for l, r in enumerate(ref.router_logits)),
    "layers": [tl.cfg.n_layers, len(resid)],
    "logits_std": ref.logits.std().item(),
}}))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_patched_tl_loads_qwen3_moe_without_plugins(patched_tl, moe_checkpoint):
    out = run_python(COMPARE.format(root=patched_tl, name=MOE),
                     env={"PYTHONPATH": patched_tl, "QWEN_INTERP_PLUGINS": ""})
    d = json.loads(out.stdout.strip().splitlines()[-1])
    print(d)
    assert d["layers"][0] == d["layers"][1]
    assert d["logits_std"] > 0.5  # not a vacuous comparison
    for key in ("logprobs", "logits_no_processing", "resid_post", "router_logits"):
        assert d[key] <= TOL, (key, d)


@pytest.mark.slow
@pytest.mark.subprocess
def test_unpatched_release_without_plugin_cannot_load_qwen3_moe(moe_checkpoint):
    bare = run_python(f"""
from transformer_lens import HookedTransformer
HookedTransformer.from_pretrained({MOE!r}, device="cpu")
""", env={"QWEN_INTERP_PLUGINS": ""}, check=False)
    assert bare.returncode != 0 and MOE in bare.stderr, bare.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.subprocess
def test_moe_plugin_stands_down_on_patched_tl(patched_tl, moe_checkpoint):
    out = run_python(f"""
import dataclasses, json, qwen_interp, torch
from transformer_lens import HookedTransformer
import transformer_lens.components.transformer_block as tb
status = {{s.part: dataclasses.asdict(s)
          for s in qwen_interp.registry().adapters["transformerlens"].status()}}
tl = HookedTransformer.from_pretrained_no_processing({MOE!r}, device="cpu")
print(json.dumps([status, tb.MLPFactory.__module__, type(tl.blocks[0].mlp).__module__]))
""", env={"PYTHONPATH": patched_tl})
    status, factory, block = json.loads(out.stdout.strip().splitlines()[-1])
    # Stood down, so no MoE block of the plugin's.
    assert status["moe"]["state"] == "upstream", status
    assert status["moe"]["detail"] == "Qwen3MoeForCausalLM: upstream HookedTransformer supports it"
    names = dict(section.split(": ", 1)
                 for section in status["model-names"]["detail"].split("; "))
    assert MOE in names["already upstream"].split(", "), status
    # Upstream's factory and block, not the plugin's.
    assert (factory, block) == ("transformer_lens.factories.mlp_factory",
                                "transformer_lens.components.mlps.moe")
