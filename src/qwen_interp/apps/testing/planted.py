"""A synthetic Qwen-Scope SAE with one planted feature, for tests that need known truth.

The planted feature detects a set of token types at one layer: its encoder row is a linear probe
fitted (least squares to +1 / -1) on the model's ``blocks.{layer}.hook_resid_post`` for each
given token type (run alone after the first token), its bias the midpoint between the classes,
scaled so that it fires (activation > 0, at least 1) on every target type and on no other given
type — the builder checks this and refuses otherwise (with more types than about twice d_model,
random directions stop being separable). Keep ``k`` = ``d_sae`` (the default) unless the
planted feature is meant to compete in the top-k. Where the layer's residual depends on the
token alone, the detector is exact in any context: so it is at the built-in demo's layer 0,
whose attention writes nothing (``apps/demo/train.py``). Tests still check the truth on their
own documents.

The decoder column is the probe direction, or, with ``promote=True``, the direction that raises
the target tokens' logits (their mean unembedding column), so steering with it makes the model
write them. The other features are random unit directions with biases that make each fire on
about ``noise_rate`` of the given types (noise).

The weights are written as the Qwen team publishes them (``layer{n}.sae.pt``: a dict of four fp32
tensors, ``W_enc`` (d_sae, d_model), ``W_dec`` (d_model, d_sae), ``b_enc``, ``b_dec``) and read back
through the project's own loader, so the SAE under test is a SAELens ``SAE`` like any
Qwen-Scope one (top-k, ``k`` of ``d_sae``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class PlantedSAE:
    sae: object  # a SAELens SAE
    feature: int  # the planted feature's index
    layer: int
    folder: Path


def type_activations(model, tokens: Sequence[int], layer: int, first_token: int
                     ) -> torch.Tensor:
    """``(len(tokens), d_model)``: ``blocks.{layer}.hook_resid_post`` of each token run alone
    after ``first_token`` (one batch)."""
    t = torch.tensor([[first_token, int(i)] for i in tokens], device=model.cfg.device)
    name = f"blocks.{layer}.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(t, names_filter=name, stop_at_layer=layer + 1)
    return cache[name][:, 1].float().cpu()


def plant_sae(model, layer: int, folder: str | Path, *, targets: Iterable[int],
              others: Iterable[int], first_token: int, d_sae: int = 64, k: int | None = None,
              feature: int = 0, promote: bool = False, seed: int = 0,
              noise_rate: float = 0.2, model_name: str = "Qwen/Qwen3-1.7B-Base") -> PlantedSAE:
    """Build, write and load the SAE (see the module's docstring). ``targets``: the token types
    the planted feature detects; ``others``: the types it must stay silent on; ``model_name``:
    the repo id the SAE says it belongs to."""
    from qwen_interp_saelens.loader import load_sae

    targets, others = sorted(set(targets)), sorted(set(others) - set(targets))
    if not targets or not others:
        raise ValueError("plant_sae needs target types and other types")
    x = type_activations(model, [*targets, *others], layer, first_token)
    target = torch.arange(len(x)) < len(targets)
    d_model = x.shape[1]
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    labels = torch.where(target, 1.0, -1.0).double().unsqueeze(1)
    solution = torch.linalg.lstsq(design, labels, driver="gelsd").solution.squeeze(1)
    w, b = solution[:-1].float(), float(solution[-1])
    score = x @ w + b
    low, high = float(score[target].min()), float(score[~target].max())
    if low <= high:
        raise ValueError(f"layer {layer}: the {len(targets)} target types are not linearly "
                         f"separable from the {len(others)} others (lowest target score "
                         f"{low:.3f} <= highest other {high:.3f})")
    mid = (low + high) / 2
    scale = 1.0 / (low - mid)  # a target type's activation is at least 1
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_model, d_sae, generator=g)
    w_dec /= w_dec.norm(dim=0, keepdim=True)
    w_enc = w_dec.T.clone() / x.norm(dim=1).mean()
    b_enc = -torch.quantile(x @ w_enc.T, 1 - noise_rate, dim=0)
    w_enc[feature] = w * scale
    b_enc[feature] = (b - mid) * scale
    if promote:
        direction = model.W_U[:, targets].detach().float().mean(dim=1).cpu()
    else:
        direction = w.clone()
    w_dec[:, feature] = direction / direction.norm()
    tensors = {"W_enc": w_enc.contiguous(), "W_dec": w_dec.contiguous(), "b_enc": b_enc,
               "b_dec": torch.zeros(d_model)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, folder / f"layer{layer}.sae.pt")
    sae = load_sae(folder, layer, k=k or d_sae, model_name=model_name,
                   device=str(model.cfg.device))
    return PlantedSAE(sae=sae, feature=feature, layer=layer, folder=folder)


def text_tokens(tokenizer, texts: Iterable[str]) -> set[int]:
    """Every token type of ``texts`` (tokenized without special tokens)."""
    return {i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]}


def token_set(tokenizer, predicate: Callable[[str], bool], ids: Iterable[int] | None = None
              ) -> set[int]:
    """The token ids (of ``ids``, default the whole vocabulary) whose decoded text satisfies
    ``predicate``."""
    ids = range(len(tokenizer)) if ids is None else ids
    return {i for i in ids if predicate(tokenizer.decode([i]))}
