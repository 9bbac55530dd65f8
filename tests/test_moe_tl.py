"""Qwen3-MoE (Qwen/Qwen3-30B-A3B-Base) in TransformerLens's HookedTransformer vs HF transformers
(the reference), on small checkpoints with the real MoE flags (norm_topk_prob, every layer
sparse, untied, 8:1 GQA). Tolerance: fp32 max abs diff <= 1e-4."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import SEED_PROMPT, run_python

MOE = "Qwen/Qwen3-30B-A3B-Base"
TOL = 1e-4


def hf_reference(name_or_path, ids, dtype=torch.float32):
    """HF logits, every decoder layer's output (the last via a forward hook: ``hidden_states[-1]``
    is after the final norm) and the router logits of every layer ([batch*pos, n_experts])."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    last = {}
    h = hf.model.layers[-1].register_forward_hook(
        lambda m, a, o: last.setdefault("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True, output_router_logits=True)
    h.remove()
    return out.logits, [*out.hidden_states[1:-1], last["x"]], out.router_logits


def prompt_ids(name_or_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(name_or_path)(SEED_PROMPT, return_tensors="pt").input_ids


def save_variant(tmp_path, hub, registry, **overrides):
    """The offline MoE checkpoint with some config flags changed, saved to a local directory."""
    from transformers import AutoModelForCausalLM
    src = hub.model(registry.model(MOE))
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    for key, value in overrides.items():
        setattr(hf.config, key, value)
    hf.save_pretrained(tmp_path)
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path)
    return str(tmp_path)


def test_moe_spec_registered(qwen_registry):
    spec = qwen_registry.model("qwen3-30b-a3b-base")
    assert (spec.repo_id, spec.architecture) == (MOE, "Qwen3MoeForCausalLM")
    assert (spec.d_model, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_head) == (
        2048, 48, 32, 4, 128)
    assert (spec.n_experts, spec.experts_per_token, spec.d_expert_mlp, spec.d_mlp) == (
        128, 8, 768, 6144)
    assert not spec.tied_embeddings
    assert "router_logits" in qwen_registry.hook_names(spec.architecture).points


@pytest.mark.parametrize("source", ["repo_id", "directory"])
def test_moe_tl_matches_hf_fp32(source, qwen_offline_hub, qwen_registry):
    from transformer_lens import HookedTransformer
    path = qwen_offline_hub.model(qwen_registry.model(MOE))
    name = MOE if source == "repo_id" else str(path)
    ids = prompt_ids(name)
    hf_logits, hf_resid, hf_router = hf_reference(name, ids)

    tl = HookedTransformer.from_pretrained(name, device="cpu", dtype=torch.float32)
    assert type(tl.blocks[0].mlp).__name__ == "Qwen3MoE"
    assert tl.cfg.n_layers == len(hf_resid)
    with torch.no_grad():
        logits, cache = tl.run_with_cache(ids)
    dlogp = (logits.log_softmax(-1) - hf_logits.log_softmax(-1)).abs().max().item()
    assert dlogp <= TOL, dlogp
    for n, ref in enumerate(hf_resid):
        diff = (cache[f"blocks.{n}.hook_resid_post"] - ref).abs().max().item()
        assert diff <= TOL, (n, diff)
        router = cache[f"blocks.{n}.mlp.hook_router_logits"]
        assert router.shape == (*ids.shape, tl.cfg.num_experts)
        diff = (router.reshape(-1, tl.cfg.num_experts) - hf_router[n]).abs().max().item()
        assert diff <= TOL, (n, diff)

    raw = HookedTransformer.from_pretrained_no_processing(name, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        dlogits = (raw(ids) - hf_logits).abs().max().item()
    assert dlogits <= TOL, dlogits
    assert hf_logits.std().item() > 0.5  # not a vacuous comparison


def test_moe_routing_and_expert_hooks_match_hf(qwen_offline_hub, qwen_registry):
    """Every point of the Qwen3-MoE hook-name map, at the first and last layer (and every expert
    HF calls there), is the same tensor in TL and HF; the chosen experts and their weights are
    HF's routing (softmax over all experts, top-k, renormalised)."""
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM
    spec = qwen_registry.model(MOE)
    hook_map = qwen_registry.hook_names(spec.architecture)
    qwen_offline_hub.model(spec)
    ids = prompt_ids(MOE)
    hf = AutoModelForCausalLM.from_pretrained(MOE, dtype=torch.float32)
    tl = HookedTransformer.from_pretrained_no_processing(MOE, device="cpu")

    seen, handles = {}, []

    def record(key, value):  # first call wins (each module runs once per forward)
        seen.setdefault(key, value)

    for path, module in hf.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, kw, p=path: record((p, "input"), a[0] if a else kw.get("hidden_states")),
            with_kwargs=True))
        handles.append(module.register_forward_hook(
            lambda m, a, o, p=path: record((p, "output"), o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        hf(ids)
        _, cache = tl.run_with_cache(ids)
    for h in handles:
        h.remove()

    checked = set()
    for layer in (0, tl.cfg.n_layers - 1):
        for name, point in hook_map.points.items():
            experts = range(tl.cfg.num_experts) if "{expert}" in point.tl else [None]
            for e in experts:
                hf_key = (point.hf_module.format(layer=layer, expert=e), point.hf_port)
                tl_name = point.tl.format(layer=layer, expert=e)
                if e is not None and hf_key not in seen:  # expert not routed to: neither side ran
                    assert tl_name not in cache, tl_name
                    continue
                assert (tl_name.replace("mlp.hook_in", "ln2.hook_normalized")
                        in tl.hook_dict), tl_name
                if tl_name.endswith("mlp.hook_in"):  # only circuit-tracer's MLP wrapper has it
                    tl_val = cache[f"blocks.{layer}.ln2.hook_normalized"] * tl.blocks[layer].ln2.w
                else:
                    tl_val = cache[tl_name]
                ref = seen[hf_key]
                if name == "router_logits":  # HF flattens the tokens
                    tl_val = tl_val.reshape(ref.shape)
                assert tl_val.shape == ref.shape, (name, layer, e)
                assert (tl_val - ref).abs().max().item() <= TOL, (name, layer, e)
                checked.add(name)
        # Routing: HF's rule recomputed from HF's own router logits.
        router = seen[(f"model.layers.{layer}.mlp.gate", "output")]
        probs = router.softmax(-1)
        top_w, top_i = probs.topk(tl.cfg.experts_per_token, dim=-1)
        k = tl.cfg.experts_per_token
        assert torch.equal(cache[f"blocks.{layer}.mlp.hook_expert_indices"].reshape(-1, k), top_i)
        weights = cache[f"blocks.{layer}.mlp.hook_expert_weights"].reshape(-1, k)
        assert (weights - top_w / top_w.sum(-1, keepdim=True)).abs().max().item() <= 1e-6
        assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[0]))
    assert checked == set(hook_map.points)


def test_moe_norm_topk_prob_false_matches_hf(tmp_path, qwen_offline_hub, qwen_registry):
    from transformer_lens import HookedTransformer
    path = save_variant(tmp_path, qwen_offline_hub, qwen_registry, norm_topk_prob=False)
    ids = prompt_ids(path)
    hf_logits, _, _ = hf_reference(path, ids)
    tl = HookedTransformer.from_pretrained_no_processing(path, device="cpu")
    assert tl.cfg.norm_topk_prob is False
    with torch.no_grad():
        logits, cache = tl.run_with_cache(ids)
    assert (logits - hf_logits).abs().max().item() <= TOL
    assert cache["blocks.0.mlp.hook_expert_weights"].sum(-1).max().item() < 0.99  # not renormalised
    # The flag matters on these weights: the renormalised model computes something else.
    normed, _, _ = hf_reference(MOE, ids)
    assert (normed - hf_logits).abs().max().item() > 1e-2


@pytest.mark.parametrize("overrides, dense", [(dict(mlp_only_layers=[1]), [1]),
                                              (dict(decoder_sparse_step=2), [0, 2])])
def test_moe_dense_layers_are_refused(overrides, dense, tmp_path, qwen_offline_hub,
                                      qwen_registry):
    """HookedTransformer has one MLP kind for all blocks: a Qwen3-MoE config with dense layers is
    refused with a clear error, never computed wrongly."""
    from transformer_lens import HookedTransformer
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(qwen_offline_hub.model(qwen_registry.model(MOE)))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.save_pretrained(tmp_path)  # the config is all the refusal needs
    with pytest.raises(NotImplementedError, match=re.escape(f"layers {dense} use a dense MLP")):
        HookedTransformer.from_pretrained_no_processing(str(tmp_path), device="cpu")


def test_moe_bf16_close_to_fp32_reference(qwen_offline_hub, qwen_registry):
    """bf16: TL's error against the fp32 HF reference is at most 1.5x HF's own bf16 error, and
    the TL experts are stored in bf16 (TL's own MoE would keep them in fp32)."""
    from transformer_lens import HookedTransformer
    qwen_offline_hub.model(qwen_registry.model(MOE))
    ids = prompt_ids(MOE)
    ref = hf_reference(MOE, ids)[0].log_softmax(-1)
    hf_bf16 = hf_reference(MOE, ids, torch.bfloat16)[0].float().log_softmax(-1)
    tl = HookedTransformer.from_pretrained_no_processing(MOE, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in tl.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        tl_bf16 = tl(ids).float().log_softmax(-1)
    hf_err = (hf_bf16 - ref).abs().max().item()
    tl_err = (tl_bf16 - ref).abs().max().item()
    assert tl_err <= 1.5 * hf_err, (tl_err, hf_err)


def test_moe_conversion_shares_expert_tensors(qwen_offline_hub, qwen_registry, monkeypatch):
    """Memory: the converted state dict holds HF's own expert tensors (no copies), and expert
    weights never reach TL's process_weights (which upcasts a copy of every bf16 tensor)."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer
    from transformer_lens.weight_processing import ProcessWeights
    from transformers import AutoModelForCausalLM
    from qwen_interp_transformerlens import moe
    qwen_offline_hub.model(qwen_registry.model(MOE))
    hf = AutoModelForCausalLM.from_pretrained(MOE, dtype=torch.bfloat16)
    cfg = loading.get_pretrained_model_config(MOE, dtype=torch.bfloat16)
    sd = moe.convert_qwen3_moe_weights(hf, cfg)
    hf_params = {p.data_ptr() for p in hf.parameters()}
    expert_keys = [k for k in sd if ".mlp.experts." in k or k.endswith("mlp.W_gate.weight")]
    assert len(expert_keys) == cfg.n_layers * (3 * cfg.num_experts + 1)
    assert all(sd[k].data_ptr() in hf_params for k in expert_keys)

    processed = []
    original = ProcessWeights.process_weights

    def spy(state_dict, *args, **kwargs):
        processed.extend(state_dict)
        return original(state_dict, *args, **kwargs)

    monkeypatch.setattr(ProcessWeights, "process_weights", staticmethod(spy))
    tl = HookedTransformer.from_pretrained(MOE, device="cpu", dtype=torch.bfloat16, hf_model=hf)
    assert processed and not [k for k in processed if ".mlp.experts." in k]
    assert torch.equal(tl.blocks[1].mlp.experts[3].W_out.weight,
                       hf.model.layers[1].mlp.experts[3].down_proj.weight)
    assert "fill_missing_keys" not in vars(tl)  # the temporary override is gone


DEACTIVATE = """
import json, tempfile
import transformer_lens.loading_from_pretrained as lp
import transformer_lens.components.transformer_block as tb
import transformer_lens.supported_models as sm
from transformer_lens import HookedTransformer
from transformers import AutoConfig
moe_dir = tempfile.mkdtemp()
AutoConfig.for_model("qwen3_moe", architectures=["Qwen3MoeForCausalLM"]).save_pretrained(moe_dir)

def snap():
    return dict(funcs=[id(lp.convert_hf_model_config), id(lp.get_pretrained_state_dict),
                       id(lp.get_official_model_name), id(tb.MLPFactory),
                       id(HookedTransformer.__dict__["load_and_process_state_dict"])],
                names="Qwen/Qwen3-30B-A3B-Base" in sm.OFFICIAL_MODEL_NAMES)

def upstream_config():
    try:
        return lp.convert_hf_model_config(moe_dir)["original_architecture"]
    except NotImplementedError as e:
        return f"NotImplementedError: {e}"

pristine, pristine_cfg = snap(), upstream_config()
import qwen_interp
active, active_cfg = snap(), upstream_config()
qwen_interp.deactivate()
print(json.dumps(dict(pristine=pristine, pristine_cfg=pristine_cfg, active=active,
                      active_cfg=active_cfg, restored=snap(), restored_cfg=upstream_config())))
"""


@pytest.mark.subprocess
def test_moe_deactivate_restores_upstream_exactly():
    import json
    out = run_python(DEACTIVATE)
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert s["pristine_cfg"].startswith("NotImplementedError")  # upstream has no path
    assert s["active_cfg"] == "Qwen3MoeForCausalLM"
    assert s["active"]["names"] and not s["pristine"]["names"]
    assert all(a != p for a, p in zip(s["active"]["funcs"], s["pristine"]["funcs"]))
    assert s["restored"] == s["pristine"]  # same function and class objects
    assert s["restored_cfg"] == s["pristine_cfg"]


@pytest.mark.subprocess
def test_moe_stands_down_when_upstream_supports_it():
    import json
    out = run_python("""
import functools, json
import transformer_lens.loading_from_pretrained as lp
import transformer_lens.components.transformer_block as tb
original = lp.convert_hf_model_config
@functools.wraps(original)
def pretend(name, **kw):  # upstream with its own Qwen3MoeForCausalLM branch
    from transformers import AutoConfig
    if AutoConfig.from_pretrained(name).architectures[0] == "Qwen3MoeForCausalLM":
        return {"original_architecture": "Qwen3MoeForCausalLM"}
    return original(name, **kw)
lp.convert_hf_model_config = pretend
factory, state_dict = tb.MLPFactory, lp.get_pretrained_state_dict
import dataclasses, qwen_interp
status = {s.part: dataclasses.asdict(s)
          for s in qwen_interp.registry().adapters["transformerlens"].status()}
print(json.dumps(dict(status=status, factory=tb.MLPFactory is factory,
                      state_dict=lp.get_pretrained_state_dict is state_dict)))
""")
    s = json.loads(out.stdout.strip().splitlines()[-1])
    moe = s["status"]["moe"]
    assert moe["state"] == "upstream" and "Qwen3MoeForCausalLM" in moe["detail"], moe  # stood down
    assert s["factory"] and s["state_dict"]
