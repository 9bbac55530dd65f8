"""Targeted data synthesis: features a dataset never activates, generation steered toward each,
and only the samples in which the target feature really fires.

1. **Inactive features.** Either from the dataset's document pass (``docpass``, pooled): a
   feature is inactive when its maximum activation over every document is at most the pass
   threshold (no stored value); or from a ``qwen-interp features compute`` run folder
   (``tables/clt.parquet``, ``tables/sae.parquet``): the rows with ``count == 0``. Targets are
   the SAE features among them, in column order (SAE layer, then feature id), first ``top``;
   or named ones. CLT features are listed but not steered: a CLT feature writes to every later
   layer, which needs circuit-tracer's ``feature_intervention_generate`` rather than the
   Qwen-Scope steering rule used here.
2. **Steered generation.** For each target ``sae/L:F``, each seed prompt, each strength ``s``
   and each sample: ``generate`` with ``h += s * W_dec[:, F]`` at layer L's ``hook_resid_post``
   at every position (Qwen-Scope's convention). The sample is prompt + continuation.
3. **Verification.** Every sample text is run again through the *unsteered* model (the document
   pass, per token). A sample is kept when the target fires (activation > threshold) on at least
   one token of the continuation (positions at or after the prompt's own token count); firing
   on the prompt alone does not count. Evidence: the maximum activation over the continuation,
   its token and position (0 = the first token after circuit-tracer's special first token), and
   every firing token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .docpass import POOLED, TOKENS, PassConfig, document_features
from .generate import generate, sae_feature
from .model import FeatureIndex, ModelConfig, feature_index


def inactive_columns(pooled: sp.csr_matrix) -> np.ndarray:
    """Columns with no stored value in any document (never above the threshold)."""
    active = np.zeros(pooled.shape[1], dtype=bool)
    active[np.unique(pooled.tocsr().indices)] = True
    return np.flatnonzero(~active)


def inactive_on_dataset(session, texts: Sequence[str], *, config: PassConfig | None = None,
                        model_config: ModelConfig | None = None, ray_address: str | None = None,
                        workers: int | None = None, progress: bool = True) -> list[str]:
    """Names of the features that never fire on ``texts`` (pooled document pass)."""
    features = document_features(session, texts, config=config, mode=POOLED,
                                 model_config=model_config, ray_address=ray_address,
                                 workers=workers, progress=progress, desc="dataset")
    return features.index.names(inactive_columns(features.pooled))


def inactive_from_stats(folder: str | Path, index: FeatureIndex) -> list[str]:
    """Names of the features with ``count == 0`` in a ``features compute`` run folder's tables,
    those of this session's dictionaries (``index``), in column order."""
    import pyarrow.parquet as pq
    tables = Path(folder) / "tables"
    files = sorted(tables.glob("*.parquet")) if tables.is_dir() else []
    if not files:
        raise ValueError(f"--stats {folder}: no tables/*.parquet (a `qwen-interp features "
                         "compute` output folder is expected)")
    names = []
    for path in files:
        table = pq.read_table(path, columns=["kind", "layer", "feature", "count"]).to_pydict()
        for kind, layer, feature, count in zip(table["kind"], table["layer"], table["feature"],
                                               table["count"], strict=True):
            block = f"{kind}/{layer}"
            if count == 0 and block in index.widths and feature < index.widths[block]:
                names.append(f"{block}:{feature}")
    return sorted(names, key=index.column)


def steerable(names: Sequence[str], index: FeatureIndex) -> list[str]:
    return [n for n in names if index.split(n)[0] == "sae"]


@dataclass
class Attempt:
    feature: str
    prompt: str
    strength: float
    sample: int
    text: str
    continuation: str
    kept: bool = False
    evidence: dict = field(default_factory=dict)


@dataclass
class SynthesisResult:
    targets: list[str]
    attempts: list[Attempt]
    inactive: list[str] = field(default_factory=list)  # all inactive features found
    settings: dict = field(default_factory=dict)

    @property
    def kept(self) -> list[Attempt]:
        return [a for a in self.attempts if a.kept]

    def per_feature(self) -> dict[str, dict]:
        out = {}
        for name in self.targets:
            mine = [a for a in self.attempts if a.feature == name]
            out[name] = {"attempts": len(mine), "kept": sum(a.kept for a in mine),
                         "by_strength": {str(s): {"attempts": sum(a.strength == s for a in mine),
                                                  "kept": sum(a.kept and a.strength == s
                                                              for a in mine)}
                                         for s in sorted({a.strength for a in mine})}}
        return out

    def report(self) -> dict:
        inactive_sae = [n for n in self.inactive if n.startswith("sae/")]
        return {"targets": self.targets, "per_feature": self.per_feature(),
                "attempts": len(self.attempts), "kept": len(self.kept),
                "inactive_features": len(self.inactive),
                "inactive_sae_features": len(inactive_sae),
                "inactive_clt_features_not_steered": len(self.inactive) - len(inactive_sae),
                "settings": self.settings}


def synthesize(session, targets: Sequence[str], prompts: Sequence[str], *,
               strengths: Sequence[float] = (4.0, 8.0, 16.0), samples: int = 1,
               max_new_tokens: int = 24, temperature: float = 0.0, seed: int = 0,
               config: PassConfig | None = None, model_name: str = "",
               progress: bool = True) -> SynthesisResult:
    """Steered attempts for every target, prompt, strength and sample, each verified on the
    unsteered model (module docstring)."""
    from tqdm.auto import tqdm
    config = config or PassConfig()
    index = feature_index(session)
    parsed = [sae_feature(index, name) for name in targets]
    if not prompts:
        raise ValueError("no seed prompts")
    attempts: list[Attempt] = []
    total = len(targets) * len(prompts) * len(strengths) * samples
    with tqdm(total=total, desc="synthesize", unit="sample", disable=not progress) as bar:
        for name, (layer, feature) in zip(targets, parsed, strict=True):
            for prompt in prompts:
                for strength in strengths:
                    for k in range(samples):
                        g = generate(session, prompt, max_new_tokens=max_new_tokens,
                                     add={layer: {feature: float(strength)}},
                                     temperature=temperature, seed=seed + k,
                                     model_name=model_name)
                        attempts.append(Attempt(feature=name, prompt=prompt,
                                                strength=float(strength), sample=k,
                                                text=g.text, continuation=g.continuation))
                        bar.update(1)
    verify(session, attempts, index, config=config, model_name=model_name)
    return SynthesisResult(targets=list(targets), attempts=attempts,
                           settings={"strengths": [float(s) for s in strengths],
                                     "samples": samples, "max_new_tokens": max_new_tokens,
                                     "temperature": temperature, "seed": seed,
                                     "threshold": config.threshold})


def verify(session, attempts: Sequence[Attempt], index: FeatureIndex, *,
           config: PassConfig, model_name: str = "") -> None:
    """Run each attempt's text through the unsteered model; set ``kept`` and ``evidence``."""
    with_text = [a for a in attempts if a.continuation.strip()]
    for a in attempts:
        a.kept, a.evidence = False, {"max_activation": 0.0, "firing": []}
    if not with_text:
        return
    tokenizer = session.model.tokenizer
    features = document_features(session, [a.text for a in with_text], config=config,
                                 mode=TOKENS, progress=False, desc="verify")
    for i, attempt in enumerate(with_text):
        start = len(tokenizer(attempt.prompt, add_special_tokens=False)["input_ids"])
        rows = features.document_tokens(i)
        column = rows[:, index.column(attempt.feature)].toarray().ravel()
        assert features.token_ids is not None and features.doc_offsets is not None
        ids = features.token_ids[features.doc_offsets[i]:features.doc_offsets[i + 1]]
        firing = [{"position": int(p), "token": tokenizer.decode([int(ids[p])]),
                   "activation": float(column[p])}
                  for p in np.flatnonzero(column > config.threshold) if p >= start]
        attempt.kept = bool(firing)
        attempt.evidence = {"max_activation": max((f["activation"] for f in firing),
                                                  default=0.0), "firing": firing,
                            "prompt_tokens": start}
        if firing:
            best = max(firing, key=lambda f: f["activation"])
            attempt.evidence.update(position=best["position"], token=best["token"])


def attempt_record(attempt: Attempt) -> dict:
    return asdict(attempt)
