"""One model, three tools: read Qwen-Scope features, steer one, and trace the steered model.

    python examples/steer_and_trace.py      # real checkpoints (or an HF cache that holds them)
"""

import torch

from qwen_interp.apps.session import Session
from qwen_interp.apps.trace import SEED_PROMPT, top_nodes

session = Session.from_pretrained("Qwen/Qwen3-1.7B-Base", "bluelightai/clt-qwen3-1.7b-base-20k",
                                  dtype=torch.bfloat16)
session.add_saes("qwen-scope-3-1.7b-base-w32k-l50", layers=[12, 20])

out = session.run(SEED_PROMPT)                      # logits, CLT and SAE features: one pass
last = out.sae_features[20][0, -1]
feature = int(last.argmax())
print(f"strongest layer-20 feature on the last token: {feature} ({last[feature]:.2f})")

with session.steer(add={20: {feature: -2 * float(last[feature])}}):   # push it down
    graph = session.attribute(SEED_PROMPT, batch_size=64, max_feature_nodes=4096)
for target, p in zip(graph.logit_targets, graph.logit_probabilities.tolist()):
    print(f"{p:6.1%} {target.token_str!r}")
for node in top_nodes(graph, session.model.tokenizer, k=10):
    print(f"{node.influence:.4f} {node.label}")
