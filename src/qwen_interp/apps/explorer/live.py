"""The Explorer's live model: Analyze, Compare and Steer on one shared :class:`Session`.

- **Analyze**: one forward pass (``Session.run``) gives the CLT features at every layer and the
  features of every attached SAE; features are ranked by their largest activation over the
  passage. The first position (the ``<|endoftext|>`` circuit-tracer puts first, whose CLT
  features it zeroes) is left out, as in the feature statistics.
- **Compare**: each feature's largest activation over text A and over text B; ranked by
  ``|A - B|``.
- **Steer**: greedy continuations, unsteered and steered. CLT edits use circuit-tracer's own
  ``feature_intervention_generate``: the feature's activation is *set* to ``value`` at every
  position after the first, generated ones included, with its defaults: the first new token is
  computed with attention patterns frozen (only those: MLPs and norms run), later ones
  propagate freely. (Its
  ``freeze_attention=False`` path sizes the edit by ``inputs.size(0)``, which is the batch for
  the (batch, pos) tokens ``generate`` needs, so it is not used.) SAE edits add
  ``value * W_dec[feature]`` at the layer output at every position (Qwen-Scope's convention,
  ``qwen_interp_saelens.steer``). circuit-tracer's generation clears every hook after its first
  step, which would drop SAE steering hooks, so one request steers one kind of dictionary.

One model serves every request; a lock makes requests take turns on it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from qwen_interp.errors import InputError

MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class Edit:
    dictionary: str  # "clt" | "sae"
    layer: int
    feature: int
    value: float

    def as_json(self) -> dict:
        return {"dict": self.dictionary, "layer": self.layer, "feature": self.feature,
                "value": self.value}


class LiveModel:
    def __init__(self, session) -> None:
        from qwen_interp.apps.features.export import token_strings
        self.session = session
        self.text = token_strings(session.model.tokenizer)
        self._lock = threading.Lock()

    # --- one pass: every feature of every dictionary over a text --------------------------------
    def activations(self, text: str) -> tuple[list[str], dict[str, torch.Tensor]]:
        """Tokens (first position left out) and {"clt": (layers, pos, F), "sae/L": (pos, F)}."""
        with self._lock:
            out = self.session.run(text, logits=False)
        tokens = out.tokens[0, 1:].tolist()
        acts: dict[str, torch.Tensor] = {}
        if out.clt_features is not None:
            acts["clt"] = out.clt_features[:, 0, 1:].float()
        for layer, feats in out.sae_features.items():
            acts[f"sae/{layer}"] = feats[0, 1:].float()
        return [self.text(t) for t in tokens], acts

    def analyze(self, text: str, k: int = 10) -> dict:
        tokens, acts = self.activations(text)
        ranked = _ranked(_max_by_feature(acts), k)
        features = []
        for key, layer, feature, value in ranked:
            per_token = _per_token(acts, key, layer, feature)
            features.append({**_feature(key, layer, feature), "max": value,
                             "mean": float(per_token.mean()), "acts": per_token.tolist()})
        return {"tokens": tokens, "features": features}

    def compare(self, a: str, b: str, k: int = 10) -> dict:
        tokens_a, acts_a = self.activations(a)
        tokens_b, acts_b = self.activations(b)
        max_a, max_b = _max_by_feature(acts_a), _max_by_feature(acts_b)
        diffs = {key: max_a[key] - max_b[key] for key in max_a}
        features = []
        for key, layer, feature, _ in _ranked({k_: d.abs() for k_, d in diffs.items()}, k):
            va = float(_select(max_a[key], layer, feature))
            vb = float(_select(max_b[key], layer, feature))
            features.append({**_feature(key, layer, feature), "a": va, "b": vb, "diff": va - vb})
        return {"a": {"tokens": tokens_a}, "b": {"tokens": tokens_b}, "features": features}

    # --- steering ------------------------------------------------------------------------------
    def steer(self, prompt: str, edits: list[Edit], max_new_tokens: int = 16) -> dict:
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise InputError(f"max_new_tokens must be 1..{MAX_NEW_TOKENS}, got {max_new_tokens}")
        kinds = {e.dictionary for e in edits}
        if not edits:
            raise InputError("steer needs at least one edit {dict, layer, feature, value}")
        if len(kinds) > 1:
            raise InputError("steer CLT or SAE features in one request, not both")
        self._check_edits(edits)
        with self._lock:
            tokens = self.session.tokens(prompt)
            unsteered = self._generate(tokens, max_new_tokens)
            if kinds == {"clt"}:
                steered = self._generate_clt(tokens, edits, max_new_tokens)
            else:
                add: dict[int, dict[int, float]] = {}
                for e in edits:
                    add.setdefault(e.layer, {})[e.feature] = add.get(e.layer, {}).get(
                        e.feature, 0.0) + e.value
                with self.session.steer(add=add):
                    steered = self._generate(tokens, max_new_tokens)
        return {"prompt": prompt, "unsteered": unsteered, "steered": steered,
                "edits": [e.as_json() for e in edits]}

    def _check_edits(self, edits: list[Edit]) -> None:
        model = self.session.model
        for e in edits:
            if e.dictionary == "clt":
                if not self.session.has_clt:
                    raise InputError("this Explorer's model has no CLT attached")
                width, layers = int(model.transcoders.d_transcoder), range(model.cfg.n_layers)
            else:
                if e.layer not in self.session.saes:
                    raise InputError(f"no SAE attached at layer {e.layer} (attached: "
                                     f"{sorted(self.session.saes)})")
                width, layers = int(self.session.saes[e.layer].cfg.d_sae), range(e.layer + 1)
            if e.layer not in layers or not 0 <= e.feature < width:
                raise InputError(f"no {e.dictionary} feature {e.layer}/{e.feature} (layers "
                                 f"0..{model.cfg.n_layers - 1}, features 0..{width - 1})")

    def _generate(self, tokens: torch.Tensor, n: int) -> str:
        out = self.session.model.generate(tokens, max_new_tokens=n, do_sample=False,
                                          use_past_kv_cache=True, verbose=False)
        return self._continuation(out, tokens)

    def _generate_clt(self, tokens: torch.Tensor, edits: list[Edit], n: int) -> str:
        model = self.session.model
        interventions = [(e.layer, slice(1, None), e.feature, e.value) for e in edits]
        try:
            out, _, _ = model.feature_intervention_generate(
                tokens, interventions, freeze_attention=True, return_activations=False,
                max_new_tokens=n, do_sample=False, verbose=False)
        finally:
            model.reset_hooks()  # circuit-tracer leaves its hooks on if generation raises
        return self._continuation(out, tokens)

    def _continuation(self, out: torch.Tensor, tokens: torch.Tensor) -> str:
        new = out[0, tokens.shape[-1]:].tolist()
        return self.session.model.tokenizer.decode(new)


# --- ranking helpers ---------------------------------------------------------------------------
def _max_by_feature(acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per key: the largest activation of each feature over positions ((layers, F) or (F,))."""
    out = {}
    for key, a in acts.items():
        pos_axis = 1 if key == "clt" else 0
        out[key] = (a.amax(dim=pos_axis) if a.shape[pos_axis]
                    else a.sum(dim=pos_axis))  # an empty passage: all zeros
    return out


def _ranked(scores: dict[str, torch.Tensor], k: int) -> list[tuple[str, int, int, float]]:
    """The k best (key, layer, feature, score) over all dictionaries, ties by key/layer/feature."""
    best: list[tuple[str, int, int, float]] = []
    for key, s in scores.items():
        flat = s.reshape(-1)
        top = torch.topk(flat, min(k, flat.numel()))
        width = s.shape[-1]
        for value, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            layer = i // width if key == "clt" else int(key.split("/")[1])
            feature = i % width
            best.append((key, layer, feature, float(value)))
    best.sort(key=lambda item: (-item[3], item[0], item[1], item[2]))
    return [item for item in best[:k] if item[3] > 0]


def _select(values: torch.Tensor, layer: int, feature: int) -> torch.Tensor:
    return values[layer, feature] if values.ndim == 2 else values[feature]


def _per_token(acts: dict[str, torch.Tensor], key: str, layer: int, feature: int) -> torch.Tensor:
    a = acts[key]
    return a[layer, :, feature] if key == "clt" else a[:, feature]


def _feature(key: str, layer: int, feature: int) -> dict:
    kind = "clt" if key == "clt" else "sae"
    return {"dict": kind, "layer": layer, "feature": feature,
            "url": f"/feature?dict={kind}&layer={layer}&feature={feature}"}
