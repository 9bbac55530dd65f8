"""Write cross-layer transcoders for tests from one set of random weights, in every on-disk
layout: BluelightAI's native ``single_file`` / ``layer_weights`` (config v1 or v2, decoder
``input_layer`` or ``output_layer``) and circuit-tracer's hub layout.

The weights are kept in BluelightAI's parameterisation (``RawCLT``) so tests can evaluate the
published formulas (FACTS.md §3) on them directly. Tensor names: see
``qwen_interp_circuit_tracer.native``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RawCLT:
    W: "torch.Tensor"  # noqa: F821  (n, d, F)
    b: "torch.Tensor"  # (n, F)
    log_threshold: "torch.Tensor"  # (n, F)
    nf_in: "torch.Tensor"  # (n,)
    nf_out: "torch.Tensor"  # (n,)
    W_dec: dict  # (i, j) -> (F, d), i <= j
    b_dec: "torch.Tensor"  # (n, d)

    @property
    def n_layers(self) -> int:
        return self.W.shape[0]

    @property
    def d_model(self) -> int:
        return self.W.shape[1]

    @property
    def d_latent(self) -> int:
        return self.W.shape[2]


def random_clt(n_layers: int, d_model: int, d_latent: int, seed: int = 0,
               norm_factors: bool = True, input_scale: float = 1.0) -> RawCLT:
    """Random weights; thresholds near the pre-activation scale so a fraction of features fire,
    norm factors away from 1 (so a dropped factor cannot hide)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    n, d, F = n_layers, d_model, d_latent
    nf_in = (0.5 + torch.rand(n, generator=g)) * input_scale if norm_factors else torch.ones(n)
    nf_out = 0.5 + torch.rand(n, generator=g) if norm_factors else torch.ones(n)
    return RawCLT(
        W=torch.randn(n, d, F, generator=g) / d ** 0.5,
        b=0.1 * torch.randn(n, F, generator=g),
        log_threshold=torch.log(0.2 + 0.6 * torch.rand(n, F, generator=g)),
        nf_in=nf_in, nf_out=nf_out,
        W_dec={(i, j): torch.randn(F, d, generator=g) / F ** 0.5
               for i in range(n) for j in range(i, n)},
        b_dec=0.1 * torch.randn(n, d, generator=g))


def write_native(folder, raw: RawCLT, *, layout: str = "single_file", config_version: int = 1,
                 decoder_layout: str = "input_layer", activation: str = "jumprelu",
                 k: int | None = None, layer_indices=None, base_model_name: str | None = None,
                 dtype: str = "float32", input_attr: str = "mlp.input",
                 output_attr: str = "mlp.output") -> Path:
    import torch
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tdtype = getattr(torch, dtype)
    n, d, F = raw.n_layers, raw.d_model, raw.d_latent

    def dec(i):
        if decoder_layout == "input_layer":
            return torch.stack([raw.W_dec[i, j] for j in range(i, n)])
        return torch.stack([raw.W_dec[s, i] for s in range(i + 1)])

    def c(t):
        return t.to(tdtype).contiguous()

    if layout == "single_file":
        tensors = {"encoder.W": c(raw.W), "encoder.b": c(raw.b), "decoder.b": c(raw.b_dec),
                   "norm_factor_in": c(raw.nf_in), "norm_factor_out": c(raw.nf_out)}
        if activation == "jumprelu":
            tensors["encoder.log_threshold"] = c(raw.log_threshold)
        tensors.update({f"decoder.W.{i}": c(dec(i)) for i in range(n)})
        save_file(tensors, str(folder / "clt.safetensors"))
    elif layout == "layer_weights":
        files = []
        for i in range(n):
            t = {"encoder.W": c(raw.W[i]), "encoder.b": c(raw.b[i]), "decoder.b": c(raw.b_dec[i]),
                 "norm_factor_in": c(raw.nf_in[i]), "norm_factor_out": c(raw.nf_out[i]),
                 "decoder.W": c(dec(i))}
            if activation == "jumprelu":
                t["encoder.log_threshold"] = c(raw.log_threshold[i])
            files.append(f"layer_{i}.safetensors")
            save_file(t, str(folder / files[-1]))
        manifest = {"format": "layer_weights", "decoder_type": decoder_layout, "files": files}
        if layer_indices is not None:
            manifest["layer_indices"] = list(layer_indices)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    else:
        raise ValueError(layout)
    li = None if layer_indices is None else list(layer_indices)
    if config_version == 1:
        cfg = {"n_layers": n, "d_in": d, "d_latent": F, "activation": activation, "k": k,
               "decoder_layout": decoder_layout, "base_model_name": base_model_name,
               "input_attr": input_attr, "output_attr": output_attr, "layer_indices": li,
               "dtype": dtype}
    else:
        cfg = {"config_version": 2,
               "base_model": {"name": base_model_name, "n_layers": n, "hook_points": {
                   "layer_attr": "model.layers", "input": {"attr": input_attr, "dim": d},
                   "output": {"attr": output_attr, "dim": d}, "layer_indices": li}},
               "architecture": {"d_latent": F, "activation": {"type": activation, "k": k},
                                "decoder": {"layout": decoder_layout}},
               "dtype": dtype}
    (folder / "model_config.json").write_text(json.dumps(cfg))
    return folder


def write_hub(folder, raw: RawCLT, *, dtype: str = "float32", config: dict | None = None) -> Path:
    """The same CLT in circuit-tracer's layout (norm factors must be 1: the hub layout has none)."""
    import torch
    import yaml
    from safetensors.torch import save_file
    if not (bool((raw.nf_in == 1).all()) and bool((raw.nf_out == 1).all())):
        raise ValueError("the hub layout has no norm factors: use random_clt(norm_factors=False)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tdtype = getattr(torch, dtype)
    n = raw.n_layers
    for i in range(n):
        save_file({f"W_enc_{i}": raw.W[i].T.contiguous().to(tdtype),
                   f"b_enc_{i}": raw.b[i].to(tdtype),
                   f"threshold_{i}": raw.log_threshold[i].exp().to(tdtype),
                   f"b_dec_{i}": raw.b_dec[i].to(tdtype)}, str(folder / f"W_enc_{i}.safetensors"))
        W_dec = torch.stack([raw.W_dec[i, j] for j in range(i, n)], dim=1)
        save_file({f"W_dec_{i}": W_dec.to(tdtype).contiguous()}, str(folder / f"W_dec_{i}.safetensors"))
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder
