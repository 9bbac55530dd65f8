"""BluelightAI's worked circuit study on the real checkpoints (GPU), as one workflow.

    python examples/seed_study/run_seed_study.py              # Qwen3-1.7B-Base + its 20k CLT
    qwen-interp study --auto-groups                           # the same on the built-in demo

Traces `Fact: The president of the United States in 2010 was`, proposes feature groups from
the graph (decoder similarity, shared downstream influence, position and layer), ablates and
scales each group in one batched forward pass, and writes `seed_study_out/report.html`. What
BluelightAI found on these checkpoints is in EXPECTED.md next to this file; compare the
report's ablation table with it. Needs the two checkpoints in the HF cache (or Hub access) and
about 25 GB of GPU memory in bfloat16.
"""

import torch

import qwen_interp  # noqa: F401 - arms the TransformerLens and circuit-tracer adapters
from qwen_interp.apps.study.workflow import StudyConfig, run_study
from qwen_interp.apps.trace import SEED_PROMPT

config = StudyConfig(
    model="Qwen/Qwen3-1.7B-Base",
    transcoder="bluelightai/clt-qwen3-1.7b-base-20k",
    prompt=SEED_PROMPT,
    target=" Barack",
    strengths=(-4.0, -2.0, -1.0, 0.0, 0.5, 1.0, 2.0),  # negative: BluelightAI's "steer down"
    max_groups=8,
    out_dir="seed_study_out",
    device="cuda" if torch.cuda.is_available() else "cpu",
    dtype="bfloat16",
    command="python examples/seed_study/run_seed_study.py",
)
study = run_study(config)

# The seed's claims, checked on this run (EXPECTED.md): the unsteered answer, and which ablations
# move it. Group names are proposed; match them to the seed's by the positions in the report.
clean = study.record["clean"]["top"][0]
print(f"unsteered: {clean['token']!r} {clean['p']:.1%} (BluelightAI: ' Barack' 74 %)")
for row in study.record["interventions"]:
    print(f"ablate {row['group']:>16}: top {row['top'][0]['token']!r} {row['top'][0]['p']:.1%}")
