"""Dictionaries trained on the demo model's own activations: a cross-layer transcoder (CLT) in
circuit-tracer's hub layout and Qwen-Scope-style top-k SAEs on the residual stream.

Data: every distinct prefix of the prompts of the corpus and of every office word crossed with
every country and year of :mod:`.facts` (the swaps a study makes: the US "chancellor", ...), less
the ``<|endoftext|>`` position, whose features circuit-tracer zeroes. Each prefix is weighted by
the number of prompts that share it (so the data is the prompts' tokens, computed once each);
training steps draw minibatches by that weight.

CLT (formats: docs/formats.md, ``hub.write_hub_clt``): ``pre = x @ W_enc.T + b_enc`` on the
MLP input after the pre-MLP RMSNorm and its gain; trained with ReLU and an L1 penalty weighted by
decoder norms, then stored with a small per-layer JumpReLU threshold (circuit-tracer computes
``pre * (pre > threshold)``) that drops near-zero activations; decoder rows write the MLP outputs
of layers >= the feature's layer.

SAE (Qwen-Scope, docs/formats.md): ``layer{n}.sae.pt`` with fp32 ``W_enc`` (d_sae, d_model),
``W_dec`` (d_model, d_sae), ``b_enc``, ``b_dec``; encode = top k of ``relu(x @ W_enc.T + b_enc)``
with the release's k, decode ``f @ W_dec.T + b_dec``; input the output of decoder layer n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import facts as F
from . import train as T

if TYPE_CHECKING:  # torch is imported where the tensors are made, not at import
    import torch

OFFICE_WORDS = tuple(dict.fromkeys(o.office for o in F.OFFICES))


@dataclass
class DictRecipe:
    """How the transcoder and the SAEs are trained (Adam on weighted minibatches, cosine decay)."""

    clt_features: int = 256  # per layer
    clt_steps: int = 1000
    clt_batch: int = 256
    clt_lr: float = 8e-3
    clt_l1: float = 4e-3
    # stored JumpReLU threshold, as a fraction of the layer's mean positive pre-activation
    clt_threshold: float = 0.02
    sae_features: int = 512
    sae_k: int = 50  # the release's k (Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50)
    sae_steps: int = 400
    sae_batch: int = 256
    sae_lr: float = 4e-3
    seed: int = 7


def activation_prompts() -> list[str]:
    """The corpus's prompts, then every office word with every country and year (the swaps)."""
    swaps = [F.TEMPLATE.format(office=office, country=country, year=year)
             for office in OFFICE_WORDS for country in F.COUNTRIES for year in F.YEARS]
    return list(dict.fromkeys([f.prompt for f in F.corpus()] + swaps))


@dataclass
class Activations:
    mlp_in: list[torch.Tensor]  # per layer (n, d_model)
    mlp_out: list[torch.Tensor]
    resid_post: list[torch.Tensor]
    weight: torch.Tensor  # (n,) how many prompts share the prefix: each node counts as often as it
    #                 occurs in the prompts, so a shared " president" weighs as much as a year


def activations(weights: dict, cfg) -> Activations:
    """The model's activations at every distinct prefix of ``activation_prompts()`` but BOS."""
    import torch
    tree = T.PrefixTree()
    count: dict[int, int] = {}
    for prompt in activation_prompts():
        ids = T.prompt_ids(prompt)
        tree.add(ids)
        for i in range(len(ids)):
            node = tree.index[tuple(ids[: i + 1])]
            count[node] = count.get(node, 0) + 1
    keep = torch.tensor(tree.depth) > 0
    capture: dict = {}
    with torch.no_grad():
        E = weights["model.embed_tokens.weight"]
        T.forward(weights, cfg, E[torch.tensor(tree.tokens)], torch.tensor(tree.depth),
                  T.Context(*tree.ancestors()), capture)
    weight = torch.tensor([count[i] for i in range(len(tree.tokens))], dtype=torch.float32)

    def kept(name: str) -> list[torch.Tensor]:
        return [x[keep] for x in capture[name]]
    return Activations(kept("mlp_in"), kept("mlp_out"), kept("resid_post"), weight[keep])


def fvu(target, recon, weight=None) -> float:
    """Fraction of variance unexplained, sum w |y - y_hat|^2 / sum w |y - mean y|^2 (weighted
    by ``weight`` per row when given)."""
    import torch
    w = torch.ones(len(target)) if weight is None else weight
    mean = (w[:, None] * target).sum(0) / w.sum()
    return ((w * (target - recon).pow(2).sum(-1)).sum()
            / (w * (target - mean).pow(2).sum(-1)).sum()).item()


# --- cross-layer transcoder --------------------------------------------------------------------
@dataclass
class CLT:
    W_enc: list  # per layer (F, d)
    b_enc: list  # (F,)
    threshold: list  # (F,)
    W_dec: list  # per layer (F, n_layers - l, d)
    b_dec: list  # (d,)

    def encode(self, layer: int, x):
        pre = x @ self.W_enc[layer].T + self.b_enc[layer]
        return pre * (pre > self.threshold[layer])

    def reconstruct(self, xs: list) -> list:
        acts = [self.encode(layer, x) for layer, x in enumerate(xs)]
        n = len(xs)
        return [sum(acts[src] @ self.W_dec[src][:, m - src] for src in range(m + 1))
                + self.b_dec[m] for m in range(n)]


def _cosine(step: int, steps: int) -> float:
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps))


def _minibatches(weight, size: int, steps: int, generator):
    """Row indices of ``steps`` minibatches drawn with probability proportional to ``weight``."""
    import torch
    return torch.multinomial(weight / weight.sum(), size * steps, replacement=True,
                             generator=generator).view(steps, size)


def train_clt(acts: Activations, recipe: DictRecipe | None = None, log=None) -> CLT:
    import torch
    recipe = recipe or DictRecipe()
    xs, ys = acts.mlp_in, acts.mlp_out
    n_layers, d = len(xs), xs[0].shape[1]
    nf = recipe.clt_features
    g = torch.Generator().manual_seed(recipe.seed)
    share = acts.weight / acts.weight.sum()
    y_mean = [(share[:, None] * y).sum(0) for y in ys]
    y_var = [(share * (y - mu).pow(2).sum(-1)).sum() for y, mu in zip(ys, y_mean)]
    x_norm = [(share * x.norm(dim=-1)).sum() for x in xs]
    # Encoders: random directions scaled to the input norm; decoders: small; biases: the mean.
    W_enc = [(torch.randn(nf, d, generator=g) / x_norm[i]).requires_grad_()
             for i in range(n_layers)]
    b_enc = [torch.zeros(nf, requires_grad=True) for _ in range(n_layers)]
    W_dec = [(torch.randn(nf, n_layers - i, d, generator=g) * (y_var[i] / nf / d).sqrt())
             .requires_grad_() for i in range(n_layers)]
    b_dec = [mu.clone().requires_grad_() for mu in y_mean]
    opt = torch.optim.Adam(W_enc + b_enc + W_dec + b_dec, lr=recipe.clt_lr)
    batches = _minibatches(acts.weight, recipe.clt_batch, recipe.clt_steps, g)
    for step, rows in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = recipe.clt_lr * _cosine(step, recipe.clt_steps)
        f = [torch.relu(x[rows] @ W_enc[i].T + b_enc[i]) for i, x in enumerate(xs)]
        # lazy: each layer's reconstruction is made just before its term is added
        recs = (sum(f[s] @ W_dec[s][:, m - s] for s in range(m + 1)) + b_dec[m]
                for m in range(n_layers))
        nmse = sum((ys[m][rows] - rec).pow(2).sum(-1).mean() / y_var[m]
                   for m, rec in enumerate(recs))
        # L1 weighted by each feature's decoder norm over all the layers it writes, ramped in
        l1 = sum((f[i] * W_dec[i].norm(dim=(1, 2))).sum(-1).mean() for i in range(n_layers))
        ramp = min(1.0, 4 * step / recipe.clt_steps)
        opt.zero_grad(set_to_none=True)
        (nmse + recipe.clt_l1 * ramp * l1).backward()
        opt.step()
        if log and (step % 500 == 0 or step == recipe.clt_steps - 1):
            log(f"  clt step {step:4d}  nmse/layer {nmse.item() / n_layers:.4f}  "
                f"l1 {l1.item():.2f}")
    with torch.no_grad():
        W_enc = [t.detach() for t in W_enc]
        b_enc = [t.detach() for t in b_enc]
        thresholds = []
        for i, x in enumerate(xs):
            pre = x @ W_enc[i].T + b_enc[i]
            active = pre[pre > 0]
            level = recipe.clt_threshold * (active.mean().item() if active.numel() else 0.0)
            thresholds.append(torch.full((nf,), level))
        clt = CLT(W_enc, b_enc, thresholds, [t.detach() for t in W_dec],
                  [t.detach() for t in b_dec])
    return round_clt(clt)


def round_clt(clt: CLT) -> CLT:
    """The CLT as stored (bf16), back in float32: what circuit-tracer will compute with."""
    import torch

    def r(ts):
        return [t.to(torch.bfloat16).float() for t in ts]
    return CLT(r(clt.W_enc), r(clt.b_enc), r(clt.threshold), r(clt.W_dec), r(clt.b_dec))


def clt_stats(clt: CLT, acts: Activations) -> list[dict]:
    """Per layer: FVU of the MLP output and mean L0 of the layer's features."""
    import torch
    with torch.no_grad():
        recs = clt.reconstruct(acts.mlp_in)
        w = acts.weight / acts.weight.sum()
        return [{"layer": m, "fvu": fvu(acts.mlp_out[m], recs[m], acts.weight),
                 "l0": (w * (clt.encode(m, acts.mlp_in[m]) > 0).float().sum(-1)).sum().item()}
                for m in range(len(recs))]


def write_clt(folder: Path, clt: CLT, release, model_repo_id: str) -> None:
    """circuit-tracer's hub layout, as ``hub.write_hub_clt`` writes it."""
    import torch
    import yaml
    from safetensors.torch import save_file
    for layer in range(len(clt.W_enc)):
        save_file({f"W_enc_{layer}": clt.W_enc[layer].to(torch.bfloat16).contiguous(),
                   f"b_enc_{layer}": clt.b_enc[layer].to(torch.bfloat16).contiguous(),
                   f"threshold_{layer}": clt.threshold[layer].to(torch.bfloat16).contiguous(),
                   f"b_dec_{layer}": clt.b_dec[layer].to(torch.bfloat16).contiguous()},
                  str(folder / f"W_enc_{layer}.safetensors"))
        save_file({f"W_dec_{layer}": clt.W_dec[layer].to(torch.bfloat16).contiguous()},
                  str(folder / f"W_dec_{layer}.safetensors"))
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": release.feature_input_hook,
        "feature_output_hook": release.feature_output_hook,
        "model_name": model_repo_id,
    }, sort_keys=False))


# --- Qwen-Scope-style SAEs ---------------------------------------------------------------------
def sae_encode(sae: dict, x, k: int):
    import torch
    pre = torch.relu(x @ sae["W_enc"].T + sae["b_enc"])
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values)


def sae_decode(sae: dict, f):
    return f @ sae["W_dec"].T + sae["b_dec"]


def train_sae(x, weight, recipe: DictRecipe | None = None, seed_offset: int = 0) -> dict:
    """One layer's SAE (Qwen-Scope orientation, fp32) on residual-stream vectors ``x`` (n, d),
    rows weighted by ``weight``."""
    import torch
    recipe = recipe or DictRecipe()
    n_feat, d, k = recipe.sae_features, x.shape[1], recipe.sae_k
    g = torch.Generator().manual_seed(recipe.seed + 1000 + seed_offset)
    share = weight / weight.sum()
    mean = (share[:, None] * x).sum(0)
    var = (share * (x - mean).pow(2).sum(-1)).sum()
    W_dec = torch.randn(d, n_feat, generator=g)
    W_dec = W_dec / W_dec.norm(dim=0, keepdim=True) * (var / k).sqrt()
    sae = {"W_enc": (W_dec.T / (var / k)).clone().requires_grad_(),
           "W_dec": W_dec.requires_grad_(),
           "b_enc": torch.zeros(n_feat, requires_grad=True),
           "b_dec": mean.clone().requires_grad_()}
    opt = torch.optim.Adam(sae.values(), lr=recipe.sae_lr)
    for step, rows in enumerate(_minibatches(weight, recipe.sae_batch, recipe.sae_steps, g)):
        for group in opt.param_groups:
            group["lr"] = recipe.sae_lr * _cosine(step, recipe.sae_steps)
        xb = x[rows]
        loss = (xb - sae_decode(sae, sae_encode(sae, xb, k))).pow(2).sum(-1).mean() / var
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {name: t.detach().float().contiguous() for name, t in sae.items()}


def sae_stats(sae: dict, x, weight, k: int) -> dict:
    import torch
    with torch.no_grad():
        f = sae_encode(sae, x, k)
        share = weight / weight.sum()
        return {"fvu": fvu(x, sae_decode(sae, f), weight),
                "l0": (share * (f > 0).float().sum(-1)).sum().item()}
