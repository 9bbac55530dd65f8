"""The Qwen3 hook-name map names real places: every HF module path exists in HF's
``Qwen3ForCausalLM``, every TransformerLens name (and alias) is a hook of circuit-tracer's
TransformerLens replacement model, and the values agree numerically between HF and TL."""

from __future__ import annotations

import torch

from helpers import SEED_PROMPT


def hf_value(model, point, layer, ids):
    module = model.get_submodule(point.hf_module.format(layer=layer))
    seen = {}

    def grab_input(mod, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    def grab_output(mod, args, out):
        seen["x"] = out[0] if isinstance(out, tuple) else out

    h = (module.register_forward_pre_hook(grab_input, with_kwargs=True) if point.hf_port == "input"
         else module.register_forward_hook(grab_output))
    with torch.no_grad():
        model(ids)
    h.remove()
    return seen["x"]


def test_qwen3_family_hook_points_agree_hf_vs_tl(qwen_offline_hub, qwen_registry):
    from circuit_tracer import ReplacementModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    spec = qwen_registry.model("Qwen/Qwen3-1.7B-Base")
    hook_map = qwen_registry.hook_names(spec.architecture)
    qwen_offline_hub.transcoder(qwen_registry.transcoder_release("bluelight-qwen3-1.7b"), spec)
    ids = AutoTokenizer.from_pretrained(spec.repo_id)(SEED_PROMPT, return_tensors="pt").input_ids
    hf = AutoModelForCausalLM.from_pretrained(spec.repo_id, dtype=torch.float32)
    tl = ReplacementModel.from_pretrained(spec.repo_id, "bluelight-qwen3-1.7b",
                                          device=torch.device("cpu"))
    with torch.no_grad():
        _, cache = tl.run_with_cache(ids)
    checked = set()
    for name, point in hook_map.points.items():
        for layer in (0, tl.cfg.n_layers - 1):
            ref = hf_value(hf, point, layer, ids)
            for tl_name in (point.tl, *point.tl_aliases):
                tl_name = tl_name.format(layer=layer)
                assert tl_name in tl.hook_dict, tl_name
                assert cache[tl_name].shape == ref.shape, (name, layer)
                assert (cache[tl_name] - ref).abs().max().item() <= 1e-4, (tl_name, layer)
                checked.add(name)
            if "{layer}" not in point.tl:
                break
    assert checked == set(hook_map.points)
