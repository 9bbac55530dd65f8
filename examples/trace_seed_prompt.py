"""Trace BluelightAI's seed circuit on Qwen3-1.7B-Base (real checkpoints; a GPU recommended).

    python examples/trace_seed_prompt.py            # needs the checkpoints or Hub access
    qwen-interp trace                               # the same job on the built-in offline demo
"""

import torch

import qwen_interp  # noqa: F401 - arms the TransformerLens and circuit-tracer adapters
from circuit_tracer import ReplacementModel, attribute

from qwen_interp.apps.trace import SEED_PROMPT, top_nodes

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model = ReplacementModel.from_pretrained("Qwen/Qwen3-1.7B-Base",
                                         "bluelightai/clt-qwen3-1.7b-base-20k",
                                         device=device, dtype=torch.bfloat16)
graph = attribute(SEED_PROMPT, model, batch_size=256, max_feature_nodes=8192)
for target, p in zip(graph.logit_targets, graph.logit_probabilities.tolist()):
    print(f"{p:6.1%} {target.token_str!r}")       # BluelightAI report " Barack" ~74 %
for node in top_nodes(graph, model.tokenizer, k=20):
    print(f"{node.influence:.4f} {node.label}")
