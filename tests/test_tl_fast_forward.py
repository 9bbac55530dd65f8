"""Fast Qwen3 forward in HookedTransformer (fast_forward.py): same numbers, same hooks.

References: upstream TL's forward (``QWEN_INTERP_FAST_FORWARD=0``, read at every call, so one
model serves both) and HF transformers. Tolerances, CPU fp32:

- logits vs upstream: 2e-5 max abs (|logits| < 6). Only the fused attention changes any bit
  (block, MLP and unembed changes are bit-identical on the CPU); its blocked online softmax sums in
  another order. Measured 1.0e-5 on 3 x 40 random tokens, where upstream's own distance to HF is
  1.4e-5 in log-probs (the fast path's: 1.1e-5);
- log-probs vs HF: 1e-4; hooked values on the fast path vs upstream: 1e-5;
- ``run_with_cache`` (all points) and circuit-tracer's ReplacementModel (activations, logits,
  attribution graph): bit-identical, since their hooks on ``hook_pattern``/``ln*.hook_scale`` send
  attention and blocks to upstream's code and the rest is bit-identical on the CPU.

bf16 (``from_pretrained_no_processing``): the fused attention keeps its softmax in fp32, upstream
rounds scores and pattern to bf16, so the two differ by bf16 noise (measured 0.16 in log-probs on
the seed prompt of this random small model, where HF's own bf16 error is 0.24). Checked: fast vs
upstream within 2x HF's bf16 error, and fast vs the fp32 HF reference within 1.5x HF's bf16 error.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from helpers import SEED_PROMPT

DENSE_17 = "Qwen/Qwen3-1.7B-Base"
DENSE_4 = "Qwen/Qwen3-4B-Base"  # 4:1 GQA, head_dim * heads != d_model
MOE = "Qwen/Qwen3-30B-A3B-Base"
MODELS = [DENSE_17, DENSE_4, MOE]
TOL_LOGITS, TOL_UP, TOL_HF = 2e-5, 1e-5, 1e-4


def ff():
    import qwen_interp_transformerlens.fast_forward as m
    return m


@contextlib.contextmanager
def upstream():
    """Upstream TL's forward for the calls inside."""
    old = os.environ.get(ff().ENV)
    os.environ[ff().ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ[ff().ENV]
        else:
            os.environ[ff().ENV] = old


@contextlib.contextmanager
def tally():
    """The fast-path counts of the calls inside."""
    ff().counts.clear()
    yield ff().counts


def maxdiff(a, b) -> float:
    """max |a - b|, with equal infinities (masked scores) counting as equal."""
    return (a - b).where(a != b, torch.zeros_like(a)).abs().max().item()


@pytest.fixture(scope="module")
def models(qwen_offline_hub, qwen_registry):
    from transformer_lens import HookedTransformer
    cache = {}

    def get(repo_id):
        if repo_id not in cache:
            qwen_offline_hub.model(qwen_registry.model(repo_id))
            cache[repo_id] = HookedTransformer.from_pretrained(repo_id, device="cpu",
                                                               dtype=torch.float32)
        return cache[repo_id]
    return get


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 151643, (3, 40), generator=g)


def test_status_line_and_patched_classes():
    from qwen_interp_transformerlens import _ADAPTER
    from transformer_lens.components import TransformerBlock
    assert TransformerBlock.forward.__code__.co_filename == ff().__file__
    fast_forward = {s.part: s for s in _ADAPTER.status()}["fast-forward"]
    assert fast_forward.state == "bridged", fast_forward


@pytest.mark.parametrize("repo_id", MODELS)
def test_logits_match_upstream_and_hf(repo_id, models, ids):
    from transformers import AutoModelForCausalLM
    model = models(repo_id)
    with torch.no_grad():
        with tally() as n:
            fast = model(ids)
        assert n["attention:fast"] == n["block:fast"] == model.cfg.n_layers
        with upstream(), tally() as n:
            up = model(ids)
        assert n["attention:upstream"] == model.cfg.n_layers and not n["attention:fast"]
        hf = AutoModelForCausalLM.from_pretrained(repo_id, dtype=torch.float32)(ids).logits
    assert maxdiff(fast, up) <= TOL_LOGITS
    dlogp = (fast.log_softmax(-1) - hf.log_softmax(-1)).abs().max().item()
    assert dlogp <= TOL_HF, dlogp
    assert up.std().item() > 0.5  # not a vacuous comparison


@pytest.mark.parametrize("repo_id", [DENSE_17, MOE])
def test_run_with_cache_has_every_upstream_key(repo_id, models, ids):
    model = models(repo_id)
    with torch.no_grad():
        with tally() as n:
            logits, cache = model.run_with_cache(ids)
        assert n["attention:upstream"] == model.cfg.n_layers  # the cache hooks the pattern
        with upstream():
            up_logits, up_cache = model.run_with_cache(ids)
    assert list(cache.keys()) == list(up_cache.keys())
    assert "blocks.0.attn.hook_pattern" in cache
    for key in up_cache.keys():
        assert cache[key].shape == up_cache[key].shape, key
        # the cache hooks every point: upstream's attention and blocks, bit-identical MLP/unembed
        assert torch.equal(cache[key], up_cache[key]), key
    assert torch.equal(logits, up_logits)


def test_cache_without_pattern_keeps_the_fast_path(models, ids):
    model = models(DENSE_17)
    names = lambda name: name.endswith(("hook_resid_post", "hook_z", "hook_rot_q"))  # noqa: E731
    with torch.no_grad():
        with tally() as n:
            _, cache = model.run_with_cache(ids, names_filter=names)
        assert n["attention:fast"] == model.cfg.n_layers
        with upstream():
            _, up_cache = model.run_with_cache(ids, names_filter=names)
    assert list(cache.keys()) == list(up_cache.keys()) and len(cache) == 3 * model.cfg.n_layers
    for key in up_cache.keys():
        assert cache[key].shape == up_cache[key].shape, key
        assert maxdiff(cache[key], up_cache[key]) <= TOL_UP, key


def test_pattern_hook_fires_and_edits(models, ids):
    """A hook on hook_pattern (ablation to uniform causal attention in layer 0) fires and changes
    the logits exactly as upstream; the other layers keep the fast path."""
    model = models(DENSE_17)
    seen = []

    def uniform(pattern, hook):
        seen.append(tuple(pattern.shape))
        causal = torch.tril(torch.ones_like(pattern))
        return causal / causal.sum(-1, keepdim=True)

    hooks = [("blocks.0.attn.hook_pattern", uniform)]
    with torch.no_grad():
        plain = model(ids)
        with tally() as n:
            fast = model.run_with_hooks(ids, fwd_hooks=hooks)
        assert n["attention:upstream"] == 1 and n["attention:fast"] == model.cfg.n_layers - 1
        with upstream():
            up = model.run_with_hooks(ids, fwd_hooks=hooks)
    b, p = ids.shape
    assert seen == [(b, model.cfg.n_heads, p, p)] * 2
    assert maxdiff(fast, up) <= TOL_LOGITS
    assert (fast - plain).abs().max().item() > 1e-2  # the edit mattered


def test_fast_path_hooks_fire_with_upstream_values(models, ids):
    """Hook points the fused path still runs fire with upstream's shapes and values, and editing
    one (zeroing a head's z) changes the logits as upstream."""
    model = models(DENSE_17)
    points = ["hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z",
              "q_norm.hook_scale", "k_norm.hook_normalized"]

    def run():
        got = {}
        hooks = [(f"blocks.1.attn.{p}", lambda x, hook: got.__setitem__(hook.name, x.clone()))
                 for p in points]

        def zero_head(z, hook):
            z = z.clone()
            z[:, :, 3] = 0
            return z
        hooks.append(("blocks.2.attn.hook_z", zero_head))
        with torch.no_grad():
            return got, model.run_with_hooks(ids, fwd_hooks=hooks)

    with tally() as n:
        fast, fast_logits = run()
    assert n["attention:fast"] == model.cfg.n_layers
    with upstream():
        up, up_logits = run()
    assert set(fast) == set(up) and len(fast) == len(points)
    for key in up:
        assert fast[key].shape == up[key].shape, key
        assert (fast[key] - up[key]).abs().max().item() <= TOL_UP, key
    assert maxdiff(fast_logits, up_logits) <= TOL_LOGITS


def test_ln1_hook_fires_three_times_as_upstream(models, ids):
    """A hook on ln1 sends the block to upstream's code (ln1 called for Q, K and V)."""
    model = models(DENSE_17)
    calls = []
    hook = [("blocks.0.ln1.hook_scale", lambda x, hook: calls.append(1))]
    with torch.no_grad(), tally() as n:
        model.run_with_hooks(ids, fwd_hooks=hook)
    assert len(calls) == 3 and n["block:upstream"] == 1


def test_backward_hook_on_pattern_and_gradients(models, ids):
    model = models(DENSE_17)
    grads = {}

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        model(ids, return_type="loss").backward()
        out = {k: p.grad.clone() for k, p in model.named_parameters() if "blocks.0." in k}
        model.zero_grad(set_to_none=True)
        return out

    with tally() as n:
        fast = loss_and_grads()
    assert n["attention:fast"] == model.cfg.n_layers
    with upstream():
        up = loss_and_grads()
    for k in up:
        assert (fast[k] - up[k]).abs().max().item() <= 1e-4 * max(1.0, up[k].abs().max().item()), k

    model.blocks[0].attn.hook_pattern.add_hook(
        lambda g, hook: grads.__setitem__("pattern", g.shape), dir="bwd")
    try:
        with tally() as n:
            model(ids, return_type="loss").backward()
        assert n["attention:upstream"] == 1
    finally:
        model.reset_hooks()
        model.zero_grad(set_to_none=True)
    assert grads["pattern"] == (ids.shape[0], model.cfg.n_heads, ids.shape[1], ids.shape[1])


def test_attention_mask_and_kv_cache_fall_back(models):
    model = models(DENSE_17)
    with torch.no_grad(), tally() as n:
        model.generate(torch.tensor([[151643, 785, 4767]]), max_new_tokens=3, verbose=False,
                       do_sample=False)
    assert n["attention:fast"] == 0 and n["attention:upstream"] > 0


def test_bf16_matches_upstream(qwen_offline_hub, qwen_registry):
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM
    qwen_offline_hub.model(qwen_registry.model(DENSE_17))
    model = HookedTransformer.from_pretrained_no_processing(DENSE_17, device="cpu",
                                                            dtype=torch.bfloat16)
    ids = model.to_tokens(SEED_PROMPT)
    with torch.no_grad():
        with tally() as n:
            fast = model(ids).float().log_softmax(-1)
        assert n["attention:fast"] == model.cfg.n_layers
        with upstream():
            up = model(ids).float().log_softmax(-1)
        ref = AutoModelForCausalLM.from_pretrained(DENSE_17, dtype=torch.float32)(ids).logits
        hf16 = AutoModelForCausalLM.from_pretrained(DENSE_17, dtype=torch.bfloat16)(ids).logits
    ref, hf16 = ref.log_softmax(-1), hf16.float().log_softmax(-1)
    hf_err = (hf16 - ref).abs().max().item()
    assert (fast - up).abs().max().item() <= 2 * hf_err
    assert (fast - ref).abs().max().item() <= 1.5 * hf_err
    assert (fast.argmax(-1) == up.argmax(-1)).float().mean() >= 0.9


def test_replacement_model_activations_unchanged(qwen_offline_hub, qwen_registry):
    """circuit-tracer hooks hook_pattern and every ln's hook_scale permanently: its forwards take
    upstream's attention and blocks, and its activations and attribution equal upstream's."""
    from circuit_tracer import ReplacementModel, attribute
    spec = qwen_registry.model(DENSE_17)
    qwen_offline_hub.transcoder(
        qwen_registry.transcoder_release("bluelightai/clt-qwen3-1.7b-base-20k"), spec)
    model = ReplacementModel.from_pretrained(DENSE_17, "bluelight-qwen3-1.7b",
                                             device=torch.device("cpu"), dtype=torch.float32)
    with tally() as n:
        logits, acts = model.get_activations(SEED_PROMPT)
        graph = attribute(SEED_PROMPT, model, batch_size=128)
    assert n["attention:upstream"] > 0 and not n["attention:fast"] and not n["block:fast"]
    with upstream():
        up_logits, up_acts = model.get_activations(SEED_PROMPT)
        up_graph = attribute(SEED_PROMPT, model, batch_size=128)
    assert torch.equal(acts, up_acts) and torch.equal(logits, up_logits)
    assert torch.equal(graph.active_features, up_graph.active_features)
    assert torch.equal(graph.adjacency_matrix, up_graph.adjacency_matrix)


def test_env_off_is_upstream_everywhere(models, ids):
    model = models(DENSE_17)
    with upstream(), torch.no_grad(), tally() as n:
        model(ids)
    assert set(n) == {"block:upstream", "attention:upstream", "mlp:upstream"}


@pytest.mark.subprocess
def test_deactivate_restores_upstream_objects():
    from helpers import run_python
    out = run_python("""
import json
from transformer_lens.components import AbstractAttention, TransformerBlock, Unembed
from transformer_lens.components.mlps.gated_mlp import GatedMLP
classes = (AbstractAttention, TransformerBlock, Unembed, GatedMLP)
snap = lambda: [id(c.__dict__["forward"]) for c in classes]
pristine = snap()
import qwen_interp
qwen_interp.activate()
active = snap()
qwen_interp.activate()
again = snap()
qwen_interp.deactivate()
restored = snap()
qwen_interp.activate()
re = snap()
qwen_interp.deactivate()
print(json.dumps(dict(pristine=pristine, active=active, again=again, restored=restored,
                      re=re, final=snap())))
""")
    import json
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(a != p for a, p in zip(s["active"], s["pristine"]))
    assert s["again"] == s["active"]
    assert s["restored"] == s["pristine"] == s["final"]
    assert all(r != p for r, p in zip(s["re"], s["pristine"]))
