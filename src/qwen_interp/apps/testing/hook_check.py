"""Check a model family's hook-name map against the models themselves: every TransformerLens name
(and alias) of every point is a hook of the TL model and holds the same tensor as the HF module
at the point's port. For model-family plugins' tests (docs/cookbook.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from qwen_interp.specs import HOOKED_TRANSFORMER, HookNameMap, HookPoint


def hf_hook_values(hf_model: Any, places: Iterable[tuple[HookPoint, int]], ids: Any) -> list:
    """The values at ``places`` ((point, layer) pairs), all from one forward pass of the HF
    model: a module's first positional input (``hf_port == "input"``) or its output (first
    element if a tuple)."""
    import torch
    places = list(places)
    seen: dict[int, Any] = {}
    handles = []

    def grab_input(i):
        def hook(mod, args, kwargs):
            seen[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def grab_output(i):
        def hook(mod, args, out):
            seen[i] = out[0] if isinstance(out, tuple) else out
        return hook

    try:
        for i, (point, layer) in enumerate(places):
            module = hf_model.get_submodule(point.hf_module.format(layer=layer))
            if point.hf_port == "input":
                handles.append(module.register_forward_pre_hook(grab_input(i), with_kwargs=True))
            elif point.hf_port == "output":
                handles.append(module.register_forward_hook(grab_output(i)))
            else:
                raise ValueError(f"hook point {point.tl!r}: hf_port is {point.hf_port!r}; "
                                 "expected 'input' or 'output'")
        with torch.no_grad():
            hf_model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[i] for i in range(len(places))]


def hook_differences(hf_model: Any, tl_model: Any, hook_map: HookNameMap, ids: Any,
                     layers: Iterable[int]) -> dict[str, float]:
    """Max |TL - HF| per TL hook name, for every point of ``hook_map`` at ``layers`` (points
    without ``{layer}`` once). A TL name the model lacks, or a shape that differs, raises
    ``AssertionError`` naming it."""
    import torch
    with torch.no_grad():
        _, cache = tl_model.run_with_cache(ids)
    places = [(name, point, layer) for name, point in hook_map.points.items()
              for layer in (layers if "{layer}" in point.tl else [0])]
    refs = hf_hook_values(hf_model, [(point, layer) for _, point, layer in places], ids)
    diffs: dict[str, float] = {}
    for (name, point, layer), ref in zip(places, refs, strict=True):
        for tl_name in (point.tl, *point.tl_aliases):
            tl_name = tl_name.format(layer=layer)
            assert tl_name in tl_model.hook_dict, (
                f"{hook_map.architecture} point {name!r}: {tl_name!r} is not a hook of the "
                f"TransformerLens model")
            assert cache[tl_name].shape == ref.shape, (
                f"{tl_name}: TL shape {tuple(cache[tl_name].shape)}, HF {point.hf_module} "
                f"{point.hf_port} shape {tuple(ref.shape)}")
            diffs[tl_name] = (cache[tl_name] - ref).abs().max().item()
    return diffs


def check_family_hook_names(hub: Any, repo_id: str, atol: float = 1e-4,
                            prompt: str = "Fact: The capital of France is") -> set[str]:
    """For a registered model whose family has the ``hooked_transformer`` capability: build its
    offline stand-in on ``hub`` (an :class:`~qwen_interp.apps.testing.hub.OfflineHub` that is the
    process's ``HF_HOME``), load it by repo id in HF transformers and in TransformerLens's
    ``HookedTransformer``, and compare every point of the family's hook-name map at the first and
    last layer. Returns the names of the points checked; raises ``AssertionError`` naming every
    TL hook that is missing or differs by more than ``atol``."""
    import torch
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import qwen_interp

    reg = qwen_interp.registry()
    spec = reg.model(repo_id)
    family = reg.model_families[spec.architecture]
    assert HOOKED_TRANSFORMER in family.capabilities, (
        f"{spec.architecture} lacks the {HOOKED_TRANSFORMER!r} capability")
    hub.model(spec)
    ids = AutoTokenizer.from_pretrained(repo_id)(prompt, return_tensors="pt").input_ids
    hf = AutoModelForCausalLM.from_pretrained(repo_id, dtype=torch.float32)
    tl = HookedTransformer.from_pretrained(repo_id, device="cpu", dtype=torch.float32)
    assert tl.cfg.original_architecture == spec.architecture, tl.cfg.original_architecture
    diffs = hook_differences(hf, tl, family.hook_names, ids, layers=(0, tl.cfg.n_layers - 1))
    too_far = {name: diff for name, diff in diffs.items() if diff > atol}
    assert not too_far, f"TL and HF differ by more than {atol}: {too_far}"
    return {name for name, point in family.hook_names.points.items()
            if point.tl.format(layer=0) in diffs}
