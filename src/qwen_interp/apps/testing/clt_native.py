"""Write cross-layer transcoders for tests from one set of random weights, in every on-disk
layout: BluelightAI's native ``single_file`` / ``layer_weights`` (config v1 or v2, decoder
``input_layer`` or ``output_layer``) and circuit-tracer's hub layout.

The native checkpoints are written the way BluelightAI's reference loader reads them
(inference-clt, https://github.com/BlueLightAI/inference-clt, MIT,
``src/inference_clt/inference_clt.py``): its state-dict key names, shapes and dtypes, its
``layer_weights`` key names (``W_enc``, ``b_enc``, ``norm_factor_in``, ``norm_factor_out``,
``log_threshold``, ``b_dec``, ``W_dec_{layer}``) and manifest, and ``model_config.json`` v1/v2
with ``n_layers`` the base model's layer count. The weights are kept in BluelightAI's
parameterisation (``RawCLT``) so tests can also evaluate the published formulas on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where the tensors are made, not at import
    import torch


@dataclass
class RawCLT:
    W: torch.Tensor  # (n, d, F)
    b: torch.Tensor  # (n, F)
    log_threshold: torch.Tensor  # (n, F)
    nf_in: torch.Tensor  # (n,)
    nf_out: torch.Tensor  # (n,)
    W_dec: dict  # (i, j) -> (F, d), i <= j
    b_dec: torch.Tensor  # (n, d)

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


def state_dict(raw: RawCLT, *, decoder_layout: str = "input_layer",
               activation: str = "jumprelu", nf_shape: str = "vector",
               decoder_bias: bool = True) -> dict:
    """The reference module's state dict (float32): ``encoder.W`` (n, d_in, d_latent),
    ``encoder.b``, ``norm_factor_in``/``norm_factor_out`` (``nf_shape`` "vector": (n,),
    "cube": (n, 1, 1)), ``activation.log_threshold`` (jumprelu), ``decoder.b`` (if
    ``decoder_bias``) and ``decoder.decoders.{i}.W`` in ``decoder_layout``."""
    import torch
    n = raw.n_layers
    shape = {"vector": (n,), "cube": (n, 1, 1)}[nf_shape]
    out = {"encoder.W": raw.W, "encoder.b": raw.b, "norm_factor_in": raw.nf_in.reshape(shape),
           "norm_factor_out": raw.nf_out.reshape(shape)}
    if activation == "jumprelu":
        out["activation.log_threshold"] = raw.log_threshold
    if decoder_bias:
        out["decoder.b"] = raw.b_dec
    for i in range(n):
        if decoder_layout == "input_layer":  # row r: layer i -> i + r
            out[f"decoder.decoders.{i}.W"] = torch.stack([raw.W_dec[i, j] for j in range(i, n)])
        elif decoder_layout == "output_layer":  # row s: layer s -> i
            out[f"decoder.decoders.{i}.W"] = torch.stack([raw.W_dec[s, i] for s in range(i + 1)])
        else:
            raise ValueError(decoder_layout)
    return out


def write_native(folder, raw: RawCLT, *, layout: str = "single_file", config_version: int = 1,
                 decoder_layout: str = "input_layer", activation: str = "jumprelu",
                 k: int | None = None, layer_indices=None, n_layers: int | None = None,
                 base_model_name: str | None = None, dtype: str = "float32",
                 config_dtype: str | None = None, input_attr: str | None = "mlp.input",
                 output_attr: str | None = "mlp.output", minimal_config: bool = False,
                 nf_shape: str = "vector", decoder_bias: bool = True,
                 manifest_layer_indices: bool = True) -> Path:
    """Write ``raw`` as a BluelightAI native checkpoint in ``folder``.

    - ``layer_indices``: the model layers the ``raw.n_layers`` covered layers sit at;
      ``n_layers``: the base model's layer count (default: ``raw.n_layers``, or
      ``max(layer_indices) + 1``).
    - ``dtype``: the tensors' dtype; ``config_dtype``: the config's ``dtype`` (default the same).
    - ``minimal_config``: leave out every key whose value is the reference's default (``k`` 0 or
      unset, ``decoder_layout``/``layout`` ``output_layer``, ``dtype`` float32, ``layer_attr``
      "layers", unset ``layer_indices``/attrs/``base_model_name`` in v1).
    - ``layer_weights``: ``encoder.safetensors`` (``W_enc``, ``b_enc``, ``norm_factor_in``,
      ``log_threshold``), ``decoder.safetensors`` (``b_dec``, ``norm_factor_out``) and
      ``layer_{N}.safetensors`` (``W_dec_{N}``), N the model layer when the manifest carries
      ``layer_indices`` (``manifest_layer_indices``), else the covered index.
    """
    import torch
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tdtype = getattr(torch, dtype)
    n, d, F = raw.n_layers, raw.d_model, raw.d_latent
    li = None if layer_indices is None else [int(i) for i in layer_indices]
    if li is not None and len(li) != n:
        raise ValueError(f"{len(li)} layer_indices for {n} covered layers")
    n_base = n_layers if n_layers is not None else (n if li is None else max(li) + 1)
    sd = {key: t.to(tdtype).contiguous() for key, t in state_dict(
        raw, decoder_layout=decoder_layout, activation=activation, nf_shape=nf_shape,
        decoder_bias=decoder_bias).items()}

    if layout == "single_file":
        save_file(sd, str(folder / "clt.safetensors"))
    elif layout == "layer_weights":
        saved = {"encoder.W": "W_enc", "encoder.b": "b_enc", "norm_factor_in": "norm_factor_in",
                 "activation.log_threshold": "log_threshold", "decoder.b": "b_dec",
                 "norm_factor_out": "norm_factor_out"}
        parts = {"encoder.safetensors": ("encoder.W", "encoder.b", "norm_factor_in",
                                         "activation.log_threshold"),
                 "decoder.safetensors": ("decoder.b", "norm_factor_out")}
        files = []
        for name, keys in parts.items():
            save_file({saved[key]: sd[key] for key in keys if key in sd}, str(folder / name))
            files.append(name)
        in_manifest = li if manifest_layer_indices else None
        for i in range(n):
            N = in_manifest[i] if in_manifest is not None else i
            files.append(f"layer_{N}.safetensors")
            save_file({f"W_dec_{N}": sd[f"decoder.decoders.{i}.W"]}, str(folder / files[-1]))
        manifest: dict[str, Any] = {"format": "layer_weights", "decoder_type": decoder_layout,
                                    "files": files}
        if in_manifest is not None:
            manifest["layer_indices"] = in_manifest
        (folder / "manifest.json").write_text(json.dumps(manifest))
    else:
        raise ValueError(layout)

    cdtype = config_dtype or dtype
    keep_k = k is not None and not (minimal_config and k == 0)
    if config_version == 1:
        cfg = {"n_layers": n_base, "d_in": d, "d_latent": F, "activation": activation,
               "k": k, "decoder_layout": decoder_layout, "base_model_name": base_model_name,
               "input_attr": input_attr, "output_attr": output_attr, "layer_indices": li,
               "dtype": cdtype}
        if minimal_config:
            for key, default in (("decoder_layout", "output_layer"), ("dtype", "float32"),
                                 ("base_model_name", None), ("input_attr", None),
                                 ("output_attr", None), ("layer_indices", None)):
                if cfg[key] == default:
                    del cfg[key]
        if not keep_k:
            del cfg["k"]
    else:
        hook_points = {"layer_attr": "layers", "input": {"attr": input_attr, "dim": d},
                       "output": {"attr": output_attr, "dim": d}, "layer_indices": li}
        act = {"type": activation, "k": k}
        decoder = {"layout": decoder_layout}
        cfg = {"config_version": 2,
               "base_model": {"name": base_model_name, "n_layers": n_base,
                              "hook_points": hook_points},
               "architecture": {"d_latent": F, "activation": act, "decoder": decoder},
               "dtype": cdtype}
        if minimal_config:
            del hook_points["layer_attr"]
            if li is None:
                del hook_points["layer_indices"]
            if decoder_layout == "output_layer":
                del decoder["layout"]
            if cdtype == "float32":
                del cfg["dtype"]
        if not keep_k:
            del act["k"]
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
        save_file({f"W_dec_{i}": W_dec.to(tdtype).contiguous()},
                  str(folder / f"W_dec_{i}.safetensors"))
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder
