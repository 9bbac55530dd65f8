"""The Qwen3 hook-name map names real places: every HF module path exists in HF's
``Qwen3ForCausalLM``, every TransformerLens name is a hook of ``HookedTransformer`` (or of
circuit-tracer's replacement MLP), and the values agree numerically between HF and TL."""

from __future__ import annotations

import torch

from conftest import SEED_PROMPT


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


def test_hook_register_hook_name_maps_qwen3_points_agree_hf_vs_tl(qwen_offline_hub, qwen_registry):
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    spec = qwen_registry.model("Qwen/Qwen3-1.7B-Base")
    hook_map = qwen_registry.hook_names(spec.architecture)
    qwen_offline_hub.model(spec)
    ids = AutoTokenizer.from_pretrained(spec.repo_id)(SEED_PROMPT, return_tensors="pt").input_ids
    hf = AutoModelForCausalLM.from_pretrained(spec.repo_id, dtype=torch.float32)
    tl = HookedTransformer.from_pretrained_no_processing(spec.repo_id, device="cpu")
    with torch.no_grad():
        _, cache = tl.run_with_cache(ids)
    checked = []
    for name, point in hook_map.points.items():
        for layer in (0, tl.cfg.n_layers - 1):
            tl_name = point.tl.format(layer=layer)
            if tl_name.endswith("mlp.hook_in"):
                # Only circuit-tracer's replacement MLP has this hook: the MLP input after the
                # pre-MLP norm *with* its gain = TL's ln2 output.
                tl_name = tl_name.replace("mlp.hook_in", "ln2.hook_normalized")
                tl_val = cache[tl_name] * tl.blocks[layer].ln2.w
            else:
                assert tl_name in tl.hook_dict, tl_name
                tl_val = cache[tl_name]
            ref = hf_value(hf, point, layer, ids)
            assert tl_val.shape == ref.shape, (name, layer)
            assert (tl_val - ref).abs().max().item() <= 1e-4, (name, layer)
            checked.append(name)
            if "{layer}" not in point.tl:
                break
    assert set(checked) == set(hook_map.points)
