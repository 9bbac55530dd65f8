"""BluelightAI's native CLT layouts (their training output) and their conversion into the
circuit-tracer layout.

Layouts (FACTS.md §3):
- ``single_file``: ``model_config.json`` + ``clt.safetensors``;
- ``layer_weights``: ``model_config.json`` + ``manifest.json`` ``{format: "layer_weights",
  decoder_type, files: [...], layer_indices?}`` + one safetensors file per covered layer (the
  manifest's ``decoder_type`` / ``layer_indices`` override the config's).

Tensor names (``n`` = number of covered layers, ``i``/``j`` covered-layer indices)::

    single_file                         layer_weights (file i, no leading layer axis)
    encoder.W        (n, d_in, d_latent)   encoder.W        (d_in, d_latent)
    encoder.b        (n, d_latent)         encoder.b        (d_latent,)
    encoder.log_threshold (n, d_latent)    encoder.log_threshold (d_latent,)   [jumprelu]
    norm_factor_in   (n,)                  norm_factor_in   ()                 [optional, 1]
    norm_factor_out  (n,)                  norm_factor_out  ()                 [optional, 1]
    decoder.b        (n, d_out)            decoder.b        (d_out,)
    decoder.W.{i}    input_layer:  (n - i, d_latent, d_out), row j - i = source i -> dest j
                     output_layer: (i + 1, d_latent, d_out), row s = source s -> dest i
                                           decoder.W  (same shapes, for this file's i)

Semantics: ``f_i = act((x_i / nf_in[i]) @ W_i + b_i)``,
``out_j = (sum_{i<=j} f_i @ W_dec[i->j] + b_dec_j) * nf_out[j]``. The conversion folds the norm
factors into the weights (``W_enc = (W / nf_in).T``, ``W_dec[i->j] *= nf_out[j]``,
``b_dec_j *= nf_out[j]``), each product computed in float32 and rounded once to the stored
dtype, and puts covered layer ``i`` at model layer ``layer_indices[i]``; model layers outside
``layer_indices`` get zero encoders and decoders (no feature can fire there, so their MLP output
is all error node).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import TranscoderValidationError
from .safetensors_header import TensorInfo, read_header
from .validate import FLOAT_DTYPES, ModelFacts, check_finite

ACTIVATIONS = {"relu", "jumprelu", "topk", "topk_all"}
LAYOUTS = {"input_layer", "output_layer"}
# Native hook attributes (relative to one decoder layer) -> circuit-tracer hook names.
HOOKS = {"mlp.input": "mlp.hook_in", "mlp.output": "mlp.hook_out",
         "post_attention_layernorm.output": "mlp.hook_in",
         "post_attention_layernorm.input": "hook_resid_mid"}


@dataclass(frozen=True)
class NativeConfig:
    folder: Path
    layout: str  # "single_file" | "layer_weights"
    n_layers: int  # covered layers
    d_in: int
    d_out: int
    d_latent: int
    activation: str
    k: int | None
    decoder_layout: str
    base_model_name: str | None
    feature_input_hook: str
    feature_output_hook: str
    layer_indices: tuple[int, ...] | None
    dtype: str
    files: tuple[str, ...]  # layer_weights: one per covered layer


def is_native(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / "model_config.json").is_file() and (
        (folder / "clt.safetensors").is_file() or (folder / "manifest.json").is_file())


def _hook(path, key, attr, port_default):
    attr = attr if attr.endswith((".input", ".output")) else f"{attr}.{port_default}"
    try:
        return HOOKS[attr]
    except KeyError:
        raise TranscoderValidationError(path, key, f"unsupported hook point {attr!r}; "
                                        f"known: {sorted(HOOKS)}") from None


def _dtype(name: str) -> str:
    return str(name).removeprefix("torch.")


def read_native_config(folder: str | Path) -> NativeConfig:
    folder = Path(folder)
    path = folder / "model_config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TranscoderValidationError(path, None, f"unreadable config ({exc})") from None
    try:
        if raw.get("config_version") == 2:
            base, arch = raw["base_model"], raw["architecture"]
            hp = base["hook_points"]
            act = arch["activation"]
            act = act if isinstance(act, dict) else {"type": act}
            fields = dict(n_layers=base["n_layers"], d_in=hp["input"]["dim"],
                          d_out=hp["output"]["dim"], d_latent=arch["d_latent"],
                          activation=act["type"], k=act.get("k"),
                          decoder_layout=arch["decoder"]["layout"], base_model_name=base.get("name"),
                          input_attr=hp["input"]["attr"], output_attr=hp["output"]["attr"],
                          layer_indices=hp.get("layer_indices"), dtype=raw.get("dtype", "float32"))
        else:
            fields = dict(n_layers=raw["n_layers"], d_in=raw["d_in"],
                          d_out=raw.get("d_out", raw["d_in"]), d_latent=raw["d_latent"],
                          activation=raw["activation"], k=raw.get("k"),
                          decoder_layout=raw["decoder_layout"],
                          base_model_name=raw.get("base_model_name"),
                          input_attr=raw["input_attr"], output_attr=raw["output_attr"],
                          layer_indices=raw.get("layer_indices"), dtype=raw.get("dtype", "float32"))
    except (KeyError, TypeError) as exc:
        raise TranscoderValidationError(path, str(exc).strip("'"), "missing config key") from None
    layout, files = "single_file", ("clt.safetensors",)
    manifest = folder / "manifest.json"
    if manifest.is_file() and not (folder / "clt.safetensors").is_file():
        try:
            man = json.loads(manifest.read_text())
            if man.get("format") != "layer_weights":
                raise ValueError(f"format {man.get('format')!r}, expected 'layer_weights'")
            files = tuple(man["files"])
        except (OSError, ValueError, KeyError) as exc:
            raise TranscoderValidationError(manifest, None, f"bad manifest ({exc})") from None
        layout = "layer_weights"
        fields["decoder_layout"] = man.get("decoder_type", fields["decoder_layout"])
        if man.get("layer_indices") is not None:
            fields["layer_indices"] = man["layer_indices"]
    cfg = NativeConfig(
        folder=folder, layout=layout, n_layers=int(fields["n_layers"]), d_in=int(fields["d_in"]),
        d_out=int(fields["d_out"]), d_latent=int(fields["d_latent"]),
        activation=str(fields["activation"]).lower().replace("jump_relu", "jumprelu"),
        k=None if fields["k"] is None else int(fields["k"]),
        decoder_layout=fields["decoder_layout"], base_model_name=fields["base_model_name"],
        feature_input_hook=_hook(path, "input_attr", fields["input_attr"], "input"),
        feature_output_hook=_hook(path, "output_attr", fields["output_attr"], "output"),
        layer_indices=None if fields["layer_indices"] is None else tuple(
            int(i) for i in fields["layer_indices"]),
        dtype=_dtype(fields["dtype"]), files=files)
    if cfg.activation not in ACTIVATIONS:
        raise TranscoderValidationError(path, "activation", f"{cfg.activation!r} is not one of "
                                        f"{sorted(ACTIVATIONS)}")
    if cfg.activation.startswith("topk") and not (cfg.k and cfg.k > 0):
        raise TranscoderValidationError(path, "k", f"{cfg.activation} needs k > 0, got {cfg.k}")
    if cfg.decoder_layout not in LAYOUTS:
        raise TranscoderValidationError(path, "decoder_layout", f"{cfg.decoder_layout!r} is not "
                                        f"one of {sorted(LAYOUTS)}")
    if cfg.dtype not in FLOAT_DTYPES:
        raise TranscoderValidationError(path, "dtype", f"{cfg.dtype!r} is not a float dtype")
    if layout == "layer_weights" and len(files) != cfg.n_layers:
        raise TranscoderValidationError(manifest, "files", f"{len(files)} files for "
                                        f"{cfg.n_layers} layers")
    li = cfg.layer_indices
    if li is not None and (len(li) != cfg.n_layers or list(li) != sorted(set(li)) or min(li) < 0):
        raise TranscoderValidationError(path, "layer_indices", f"{list(li)} must be {cfg.n_layers} "
                                        "increasing, distinct, non-negative layers")
    return cfg


def model_layers(cfg: NativeConfig) -> tuple[int, ...]:
    return cfg.layer_indices if cfg.layer_indices is not None else tuple(range(cfg.n_layers))


def _expected(cfg: NativeConfig) -> dict[str, dict[str, tuple]]:
    """file name -> tensor name -> expected shape."""
    n, di, do, F = cfg.n_layers, cfg.d_in, cfg.d_out, cfg.d_latent
    dec = (lambda i: (n - i, F, do)) if cfg.decoder_layout == "input_layer" else (
        lambda i: (i + 1, F, do))
    if cfg.layout == "single_file":
        t = {"encoder.W": (n, di, F), "encoder.b": (n, F), "decoder.b": (n, do)}
        if cfg.activation == "jumprelu":
            t["encoder.log_threshold"] = (n, F)
        t.update({f"decoder.W.{i}": dec(i) for i in range(n)})
        return {"clt.safetensors": t}
    out = {}
    for i, name in enumerate(cfg.files):
        t = {"encoder.W": (di, F), "encoder.b": (F,), "decoder.b": (do,), "decoder.W": dec(i)}
        if cfg.activation == "jumprelu":
            t["encoder.log_threshold"] = (F,)
        out[name] = t
    return out


def validate_native(cfg: NativeConfig, model: ModelFacts | None) -> None:
    """Headers, shapes, dtypes, model fit, finite thresholds and norm factors: before any write."""
    cfg_path = cfg.folder / "model_config.json"
    if cfg.d_in != cfg.d_out:
        raise TranscoderValidationError(cfg_path, "d_out", f"d_in {cfg.d_in} != d_out {cfg.d_out}")
    if model is not None:
        if cfg.d_in != model.d_model:
            raise TranscoderValidationError(cfg_path, "d_in", f"d_in {cfg.d_in}, but {model.name} "
                                            f"has d_model {model.d_model}")
        layers = model_layers(cfg)
        if cfg.layer_indices is None and cfg.n_layers != model.n_layers:
            raise TranscoderValidationError(cfg_path, "n_layers", f"{cfg.n_layers} layers, but "
                                            f"{model.name} has {model.n_layers}")
        if max(layers) >= model.n_layers:
            raise TranscoderValidationError(cfg_path, "layer_indices", f"layer {max(layers)}, but "
                                            f"{model.name} has {model.n_layers} layers")
    import torch
    from safetensors import safe_open
    for fname, tensors in _expected(cfg).items():
        path = cfg.folder / fname
        head = read_header(path)
        for name, shape in tensors.items():
            info: TensorInfo | None = head.get(name)
            if info is None:
                raise TranscoderValidationError(path, name, "tensor is missing")
            if tuple(info.shape) != shape:
                raise TranscoderValidationError(path, name, f"shape {list(info.shape)}, expected "
                                                f"{list(shape)}")
            if info.dtype != cfg.dtype:
                raise TranscoderValidationError(path, name, f"dtype {info.dtype}, config says "
                                                f"{cfg.dtype}")
        scalar_shape = (cfg.n_layers,) if cfg.layout == "single_file" else ()
        for name in ("norm_factor_in", "norm_factor_out"):
            if name in head and tuple(head[name].shape) != scalar_shape:
                raise TranscoderValidationError(path, name, f"shape {list(head[name].shape)}, "
                                                f"expected {list(scalar_shape)}")
        with safe_open(str(path), framework="pt") as f:
            for name in ("encoder.log_threshold", "norm_factor_in", "norm_factor_out"):
                if name in head and name in f.keys():
                    t = f.get_tensor(name)
                    check_finite(path, name, t)
                    if name.startswith("norm_factor") and not bool((t > 0).all()):
                        raise TranscoderValidationError(path, name, "norm factor must be > 0")
    del torch


def convert_native(cfg: NativeConfig, out: Path, n_model_layers: int) -> None:
    """Write the circuit-tracer layout of ``cfg`` into ``out``, one layer at a time: the peak is
    one output decoder layer (d_latent x (n - l) x d_model in the stored dtype) plus one
    float32 row."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    dtype = getattr(torch, cfg.dtype)
    F, d = cfg.d_latent, cfg.d_in
    cover = model_layers(cfg)
    where = {m: i for i, m in enumerate(cover)}  # model layer -> covered index
    handles = {}

    def open_(fname):
        if fname not in handles:
            handles[fname] = safe_open(str(cfg.folder / fname), framework="pt")
        return handles[fname]

    def get(i, name):
        """Tensor ``name`` of covered layer i (without the layer axis)."""
        if cfg.layout == "single_file":
            f = open_("clt.safetensors")
            return f.get_slice(name)[i] if name in f.keys() else None
        f = open_(cfg.files[i])
        return f.get_tensor(name) if name in f.keys() else None

    def scalar(i, name):
        t = get(i, name)
        return torch.ones(()) if t is None else t.float().reshape(())

    def dec_row(src, dst):
        """W_dec[src -> dst] (covered indices), (F, d) float32."""
        if cfg.layout == "single_file":
            f = open_("clt.safetensors")
            if cfg.decoder_layout == "input_layer":
                return f.get_slice(f"decoder.W.{src}")[dst - src].float()
            return f.get_slice(f"decoder.W.{dst}")[src].float()
        if cfg.decoder_layout == "input_layer":
            return open_(cfg.files[src]).get_slice("decoder.W")[dst - src].float()
        return open_(cfg.files[dst]).get_slice("decoder.W")[src].float()

    nf_out = [scalar(j, "norm_factor_out") for j in range(cfg.n_layers)]
    for m in range(n_model_layers):
        i = where.get(m)
        enc = {}
        if i is None:
            enc[f"W_enc_{m}"] = torch.zeros(F, d, dtype=dtype)
            enc[f"b_enc_{m}"] = torch.zeros(F, dtype=dtype)
            enc[f"b_dec_{m}"] = torch.zeros(d, dtype=dtype)
        else:
            W = get(i, "encoder.W").float() / scalar(i, "norm_factor_in")
            enc[f"W_enc_{m}"] = W.T.contiguous().to(dtype)
            enc[f"b_enc_{m}"] = get(i, "encoder.b").to(dtype).contiguous()
            enc[f"b_dec_{m}"] = (get(i, "decoder.b").float() * nf_out[i]).to(dtype)
            del W
        if cfg.activation == "jumprelu":
            enc[f"threshold_{m}"] = (torch.zeros(F, dtype=dtype) if i is None else
                                     get(i, "encoder.log_threshold").float().exp().to(dtype))
        save_file(enc, str(out / f"W_enc_{m}.safetensors"))
        del enc
        W_dec = torch.zeros(F, n_model_layers - m, d, dtype=dtype)
        if i is not None:
            for j in range(i, cfg.n_layers):
                W_dec[:, cover[j] - m] = (dec_row(i, j) * nf_out[j]).to(dtype)
        save_file({f"W_dec_{m}": W_dec}, str(out / f"W_dec_{m}.safetensors"))
        del W_dec


def write_ct_layout(cfg: NativeConfig, out: Path, n_model_layers: int, model_name) -> None:
    """Convert ``cfg`` into ``out`` and add the ``config.yaml`` circuit-tracer loads it with
    (hooks, activation and k, where it came from)."""
    import yaml
    convert_native(cfg, out, n_model_layers)
    activation = {"jumprelu": "jump_relu"}.get(cfg.activation, cfg.activation)
    (out / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": cfg.feature_input_hook,
        "feature_output_hook": cfg.feature_output_hook,
        "model_name": model_name, "activation": activation, "k": cfg.k,
        "converted_from": str(cfg.folder), "source_layout": cfg.layout,
    }, sort_keys=False))
