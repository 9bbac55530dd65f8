"""The demo's circuit, checked with circuit-tracer the way a study checks one: which CLT features
carry the year and the office of a prompt, and what the model says when they are ablated.

Features are grouped by behaviour, not by label: a feature active on the prompt belongs to the
**year** group (at the year's digit tokens, or at the final " was") when its activation there
changes by more than ``threshold`` of itself, on average over prompts that differ only in the
year (years with another holder); to the **office** group (at the office token) when it changes
that much over prompts that differ only in the office word (the other offices and the filler
topics of the same token length). Ablation = ``ReplacementModel.feature_intervention(tokens,
[(layer, pos, feature, 0.0), ...])`` with circuit-tracer's defaults (attention patterns frozen,
effects propagating through the MLPs and the transcoder).

Run ``python -m qwen_interp.apps.demo.circuit`` for the report on the demo cache (built first if
needed); :func:`verify` returns it as a dict.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from . import facts as F

Feature = tuple[int, int, int]  # (layer, position, feature index)


def replacement_model(device: str = "cpu"):
    """circuit-tracer's ``ReplacementModel`` of the demo, float32, from the Hugging Face cache
    that HF_HOME names (set it before huggingface_hub is imported)."""
    import torch

    import qwen_interp  # noqa: F401 - activates the adapters
    from circuit_tracer import ReplacementModel

    from .build import MODEL_REPO, TRANSCODER_REPO
    return ReplacementModel.from_pretrained(MODEL_REPO, TRANSCODER_REPO, backend="transformerlens",
                                            device=device, dtype=torch.float32)


def prompt_tokens(prompt: str):
    """The prompt's token ids after circuit-tracer's prepended ``<|endoftext|>``."""
    import torch
    return torch.tensor([F.BOS_ID, *F.token_ids(prompt)])


def top_tokens(logits, k: int = 5) -> list[tuple[str, float]]:
    """The k most likely next tokens at the last position, with probabilities."""
    probs = logits[0, -1].float().softmax(-1)
    values, ids = probs.topk(k)
    tok = F.tokenizer()
    return [(tok.decode([i]), round(v, 4)) for v, i in zip(values.tolist(), ids.tolist())]


def year_variants(prompt: str) -> list[str]:
    """The prompt with each year whose answer differs (same office and country)."""
    office, country, year = F.parse_prompt(prompt)
    record = F.office_of(office, country)
    here = F.answer(F.holder(record, year))
    return [F.TEMPLATE.format(office=office, country=country, year=y) for y in F.YEARS
            if F.answer(F.holder(record, y)) != here]


def office_variants(prompt: str) -> list[str]:
    """The prompt with each other office word or filler topic of the same token length."""
    office, country, year = F.parse_prompt(prompt)
    n = len(F.token_ids(" " + office))
    known = [o.office for o in F.OFFICES] + list(F.FILLERS)
    return [F.TEMPLATE.format(office=word, country=country, year=year)
            for word in dict.fromkeys(known)
            if word != office and len(F.token_ids(" " + word)) == n]


def activations(rm, prompt: str):
    """(logits, activations (n_layers, n_pos, d_transcoder)) of circuit-tracer's transcoder."""
    return rm.get_activations(prompt_tokens(prompt))


def changed_features(rm, prompt: str, variants: list[str], positions: list[int],
                     threshold: float = 0.5) -> list[Feature]:
    """Active features of ``prompt`` at ``positions`` whose activation moves, on average over
    ``variants`` (same token count), by more than ``threshold`` of its value."""
    import torch
    _, base = activations(rm, prompt)
    others = torch.stack([activations(rm, v)[1] for v in variants])
    if others.shape[1:] != base.shape:
        raise ValueError("variants must have the prompt's token count")
    change = (others - base[None]).abs().mean(0) / base.clamp_min(1e-6)
    found = ((base > 0) & (change > threshold)).nonzero().tolist()
    return [(layer, pos, feat) for layer, pos, feat in found if pos in positions]


@dataclass
class Groups:
    year_digits: list[Feature] = field(default_factory=list)
    year_final: list[Feature] = field(default_factory=list)
    office: list[Feature] = field(default_factory=list)


def feature_groups(rm, prompt: str = "", threshold: float = 0.5) -> Groups:
    from qwen_interp.apps.trace import SEED_PROMPT
    prompt = prompt or SEED_PROMPT
    roles = F.token_roles(prompt)
    years = changed_features(rm, prompt, year_variants(prompt), roles["year"] + roles["final"],
                             threshold)
    offices = changed_features(rm, prompt, office_variants(prompt), roles["office"], threshold)
    return Groups(year_digits=[f for f in years if f[1] in roles["year"]],
                  year_final=[f for f in years if f[1] in roles["final"]],
                  office=offices)


def ablate(rm, prompt: str, features: list[Feature], k: int = 5) -> list[tuple[str, float]]:
    """Top-k next tokens with ``features`` set to 0 (circuit-tracer's default intervention)."""
    logits, _ = rm.feature_intervention(prompt_tokens(prompt),
                                        [(layer, pos, feat, 0.0) for layer, pos, feat in features])
    return top_tokens(logits, k)


def is_name(token: str) -> bool:
    return token in F.name_answers()


def us_president(token: str) -> bool:
    return token in {F.answer(t) for t in F.US.terms}


def verify(rm, prompt: str = "", threshold: float = 0.5) -> dict:
    """The checks of the demo's circuit on ``prompt`` (the seed by default): the prediction, the
    feature groups, and the top-5 after ablating each group."""
    from qwen_interp.apps.trace import SEED_PROMPT
    prompt = prompt or SEED_PROMPT
    logits, acts = activations(rm, prompt)
    groups = feature_groups(rm, prompt, threshold)
    ablations = {
        "year at the digits": groups.year_digits,
        "year at the digits and ' was'": groups.year_digits + groups.year_final,
        "office at the office word": groups.office,
    }
    return {
        "prompt": prompt,
        "top": top_tokens(logits),
        "active_features": int((acts > 0).sum()),
        "groups": {"year_digits": groups.year_digits, "year_final": groups.year_final,
                   "office": groups.office},
        "ablations": {name: ablate(rm, prompt, feats) for name, feats in ablations.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-home", help="a cache built by build_trained_demo "
                        "(default: the demo cache of `qwen-interp trace`, built if needed)")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.hf_home:
        os.environ.update(HF_HOME=args.hf_home, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    else:
        from qwen_interp.apps.trace import start_demo
        from .build import MODEL_REPO, TRANSCODER_REPO
        start_demo(MODEL_REPO, TRANSCODER_REPO)
    rm = replacement_model()
    report = verify(rm, args.prompt, args.threshold)
    if args.json:
        import json
        report["transcoder"] = {"n_layers": rm.cfg.n_layers,
                                "d_transcoder": int(rm.transcoders.d_transcoder)}
        print(json.dumps(report))
        return 0
    print(f"prompt: {report['prompt']!r}")
    print(f"top-5: {report['top']}")
    print(f"active features: {report['active_features']}")
    for name, feats in report["groups"].items():
        print(f"group {name}: {len(feats)} features")
    for name, top in report["ablations"].items():
        print(f"ablate {name}: {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
