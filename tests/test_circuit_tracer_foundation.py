"""circuit-tracer on a Qwen3 Base checkpoint by repo id, offline, TransformerLens backend:
the replacement model loads after ``import qwen_interp`` and ``attribute()`` reports the model's
own output distribution (circuit-tracer's invariant: graph logit probabilities are the softmax
of the model's logits at the last position)."""

from __future__ import annotations

import torch

from helpers import SEED_PROMPT


def test_hook_register_transcoder_releases_replacement_model_by_repo_id(
        qwen_offline_hub, qwen_registry):
    from circuit_tracer import ReplacementModel, attribute
    release = qwen_registry.transcoder_release("bluelightai/clt-qwen3-1.7b-base-20k")
    assert release.model_repo_id == "Qwen/Qwen3-1.7B-Base"
    qwen_offline_hub.transcoder(release, qwen_registry.model(release.model_repo_id))

    rm = ReplacementModel.from_pretrained("Qwen/Qwen3-1.7B-Base", release.repo_id,
                                          device=torch.device("cpu"), dtype=torch.float32)
    graph = attribute(SEED_PROMPT, rm, max_n_logits=5, desired_logit_prob=0.9, batch_size=32)

    with torch.no_grad():
        logits = rm(graph.input_tokens.unsqueeze(0))[0, -1]
    probs = logits.softmax(-1)
    ids = torch.tensor([t.vocab_idx for t in graph.logit_targets])
    assert torch.allclose(graph.logit_probabilities.cpu(), probs[ids], atol=1e-6)
    assert torch.equal(ids, probs.topk(len(ids)).indices)
    # The graph covers every prompt token (plus the special token circuit-tracer prepends).
    from transformers import AutoTokenizer
    n_tokens = len(AutoTokenizer.from_pretrained("Qwen/Qwen3-1.7B-Base")(SEED_PROMPT).input_ids)
    assert graph.n_pos == n_tokens + 1
    assert graph.active_features.shape[0] > 0
