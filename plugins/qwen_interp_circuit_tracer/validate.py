"""Validation of circuit-tracer-layout CLT folders, from headers only (plus the small threshold
vectors), before circuit-tracer allocates anything. Every failure is one
:class:`TranscoderValidationError` naming the file and tensor."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import TranscoderValidationError
from .safetensors_header import read_header

FLOAT_DTYPES = {"bfloat16", "float16", "float32", "float64"}


@dataclass(frozen=True)
class ModelFacts:
    """What a transcoder must agree with: the target model's width and depth."""

    name: str
    d_model: int
    n_layers: int


@dataclass(frozen=True)
class HubLayoutInfo:
    n_layers: int
    d_latent: int
    d_model: int
    dtype: str
    has_threshold: bool


def model_facts(model_name: str | None, registry=None) -> ModelFacts | None:
    """Width and depth of ``model_name``: its ``config.json`` (local folder or Hub cache, so a
    small offline stand-in is judged by its own shape), else the registered ModelSpec."""
    if not model_name:
        return None
    cfg = None
    local = Path(model_name) / "config.json"
    try:
        if local.is_file():
            cfg = json.loads(local.read_text())
        else:
            from huggingface_hub import hf_hub_download
            cfg = json.loads(Path(hf_hub_download(model_name, "config.json")).read_text())
    except Exception:  # noqa: BLE001 - offline without a cached config: use the registry
        cfg = None
    if cfg is not None:
        cfg = cfg.get("text_config", cfg)
        return ModelFacts(model_name, int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]))
    if registry is not None:
        try:
            spec = registry.model(model_name)
        except KeyError:
            return None
        return ModelFacts(spec.repo_id, spec.d_model, spec.n_layers)
    return None


def _expect(path, name, info, shape, what):
    if info is None:
        raise TranscoderValidationError(path, name, f"tensor is missing ({what})")
    if info.dtype not in FLOAT_DTYPES:
        raise TranscoderValidationError(path, name, f"dtype {info.dtype} is not a float type")
    if tuple(info.shape) != tuple(shape):
        raise TranscoderValidationError(path, name, f"shape {list(info.shape)}, expected "
                                        f"{list(shape)} ({what})")


def check_finite(path, name, tensor) -> None:
    import torch
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
        raise TranscoderValidationError(path, name, f"non-finite value at index {bad}")


def check_hook_names(path, hooks: dict, valid, model: str) -> None:
    """Each ``config.yaml`` hook (``feature_input_hook``/``feature_output_hook`` -> name inside a
    block) must be one of the model's ``valid`` block hook names."""
    import difflib
    for key, name in hooks.items():
        if name not in valid:
            close = difflib.get_close_matches(str(name), sorted(valid), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise TranscoderValidationError(
                path, key, f"{name!r} is not a hook point in the blocks of {model}{hint} "
                f"Hook points there: {sorted(valid)}")


def check_non_negative(path, name, threshold) -> None:
    """A JumpReLU threshold below 0 lets features fire with negative values. Its readers
    disagree on such a file: circuit-tracer's ``load_clt`` uses the value as is, BluelightAI's
    reference loader (inference-clt, src/inference_clt/inference_clt.py) stores
    ``log(threshold.clamp_min(1e-12))``, i.e. treats it as ~0. BluelightAI trains
    ``log_threshold``, so its thresholds are positive by construction: a negative one is a
    broken file, refused rather than read either way. Zero (plain ReLU) is accepted."""
    negative = threshold < 0
    if negative.any():
        first = int(negative.nonzero()[0, 0])
        raise TranscoderValidationError(
            path, name, f"{int(negative.sum())} negative JumpReLU thresholds (first at feature "
            f"{first}: {float(threshold[first]):g}); thresholds must be >= 0")


def validate_hub_layout(folder: str | Path, model: ModelFacts | None = None) -> HubLayoutInfo:
    """Check a circuit-tracer-layout CLT folder: every layer's pair of files, consistent shapes
    and dtypes, finite thresholds, and (if given) the model's d_model and n_layers."""
    folder = Path(folder)
    found = sorted(int(m.group(1)) for p in folder.glob("W_enc_*.safetensors")
                   if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", p.name)))
    if not found:
        raise TranscoderValidationError(folder, None, "no W_enc_*.safetensors files")
    n_layers = model.n_layers if model else max(found) + 1
    if model and max(found) + 1 > model.n_layers:
        raise TranscoderValidationError(folder / f"W_enc_{max(found)}.safetensors", None,
                                        f"layer {max(found)} but {model.name} has "
                                        f"{model.n_layers} layers")
    first = folder / "W_enc_0.safetensors"
    head = read_header(first)
    if "W_enc_0" not in head or len(head["W_enc_0"].shape) != 2:
        raise TranscoderValidationError(first, "W_enc_0", "missing or not a matrix")
    d_latent, d_model = head["W_enc_0"].shape
    dtype = head["W_enc_0"].dtype
    if model and d_model != model.d_model:
        raise TranscoderValidationError(first, "W_enc_0", f"d_model {d_model}, but {model.name} "
                                        f"has d_model {model.d_model}")
    has_threshold = "threshold_0" in head
    for layer in range(n_layers):  # every file first: a missing layer is named as such
        for kind in ("W_enc", "W_dec"):
            path = folder / f"{kind}_{layer}.safetensors"
            if not path.is_file():
                raise TranscoderValidationError(path, f"{kind}_{layer}", f"layer {layer} is "
                                                f"missing ({n_layers} layers expected)")
    for layer in range(n_layers):
        enc = folder / f"W_enc_{layer}.safetensors"
        dec = folder / f"W_dec_{layer}.safetensors"
        h = read_header(enc)
        for name, shape in ((f"W_enc_{layer}", (d_latent, d_model)),
                            (f"b_enc_{layer}", (d_latent,)), (f"b_dec_{layer}", (d_model,))):
            _expect(enc, name, h.get(name), shape, f"layer {layer}")
        if has_threshold:
            _expect(enc, f"threshold_{layer}", h.get(f"threshold_{layer}"), (d_latent,),
                    "JumpReLU thresholds, present for layer 0")
        elif f"threshold_{layer}" in h:
            raise TranscoderValidationError(enc, f"threshold_{layer}",
                                            "threshold present but absent for layer 0")
        _expect(dec, f"W_dec_{layer}", read_header(dec).get(f"W_dec_{layer}"),
                (d_latent, n_layers - layer, d_model), f"decoder of layer {layer}")
    if has_threshold:
        from safetensors import safe_open
        for layer in range(n_layers):
            enc = folder / f"W_enc_{layer}.safetensors"
            with safe_open(str(enc), framework="pt") as f:
                threshold = f.get_tensor(f"threshold_{layer}")
            check_finite(enc, f"threshold_{layer}", threshold)
            check_non_negative(enc, f"threshold_{layer}", threshold)
    return HubLayoutInfo(n_layers, d_latent, d_model, dtype, has_threshold)
