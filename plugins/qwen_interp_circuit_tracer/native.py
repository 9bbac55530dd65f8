"""BluelightAI's native CLT checkpoints (their training output), read the way BluelightAI's own
reference loader reads them, and their conversion into the circuit-tracer layout.

Reference: BluelightAI's ``inference-clt`` (https://github.com/BlueLightAI/inference-clt, MIT),
``src/inference_clt/inference_clt.py`` at commit fc32369. Where this module and it could differ,
the reference wins; the tests compare both on every layout it reads.

Detection: a folder with ``model_config.json`` is native; with ``manifest.json`` it is
``layer_weights``, else ``single_file``.

``model_config.json``. ``n_layers`` is the *base model's* layer count; the CLT covers
``n = len(layer_indices)`` layers if ``layer_indices`` is set, else ``n_layers``, and covered layer
``i`` sits at model layer ``layer_indices[i]``. A ``config_version`` other than 2 reads as v1.

- v1: ``n_layers``, ``d_in`` (also d_out), ``d_latent``, ``activation``, ``k`` (default 0),
  ``decoder_layout`` (default ``output_layer``), ``base_model_name``, ``input_attr``,
  ``output_attr``, ``layer_indices``, ``dtype`` (default ``float32``).
- v2: ``{config_version: 2, base_model: {name, n_layers, hook_points: {layer_attr (default
  "layers"), input: {attr, dim}, output: {attr, dim}, layer_indices}}, architecture: {d_latent,
  activation: {type, k (default 0)}, decoder: {layout (default output_layer)}}, dtype}``.

The state dict (the reference module's keys)::

    encoder.W                 (n, d_in, d_latent)
    encoder.b                 (n, d_latent)
    norm_factor_in/_out       n values (or 1 for all layers), any shape: reshaped to (-1, 1, 1).
                              Required (the reference raises "missing normalization factors").
    activation.log_threshold  (n, d_latent), jumprelu only; threshold = exp(log_threshold)
    decoder.b                 (n, d_out), optional (zeros)
    decoder.decoders.{i}.W    input_layer:  (n - i, d_latent, d_out), row r: layer i -> i + r
                              output_layer: (i + 1, d_latent, d_out), row s: layer s -> i
                              (rows past i are never read, so more rows are accepted)

- ``single_file``: ``clt.safetensors`` holds exactly these keys.
- ``layer_weights``: ``manifest.json`` ``{format: "layer_weights", decoder_type, files,
  layer_indices?}``. Each listed file that exists is read (a missing one is skipped, as the
  reference does), in order, a later key overwriting an earlier one; its keys are renamed:
  ``W_enc``, ``b_enc``, ``norm_factor_in``, ``norm_factor_out``, ``log_threshold``, ``b_dec``,
  ``W_dec_shared`` by ``LAYER_KEYS``; any other key ``P_X_N`` becomes ``decoder.decoders.N'.P``
  (``decoder.layer_connections.N'.P`` if ``decoder_type`` is not a layout below), with ``N'`` = N,
  or N's position in the manifest's ``layer_indices`` when that is set. So the shared tensors
  keep their full leading layer axis; only decoder weights are split per layer.

Semantics (reference ``encode``/``decode``; layer-first tensors (n, tokens, d)):
``f_i = act((x_i / nf_in[i]) @ W_i + b_i)``,
``out_j = (sum_{i<=j} f_i @ W_dec[i->j] + b_dec_j) * nf_out[j]``.
Activations: ``relu``; ``jumprelu`` = ``pre * (pre > threshold)`` (strict); ``topk`` = top k of
``relu(pre)`` over d_latent, per layer and token; ``topk_all`` = ``relu(pre).flatten(-2, -1)``
then top k: on the (n, tokens, d_latent) pre-activations ``encode`` receives, that is the top k
per *layer* over all tokens x features of the call, not over the layers of one token (which the
name suggests, and which this module assumed before it was checked against the reference). We
follow the reference; ``topk.py`` says how a circuit-tracer call maps onto it.

Refused with one :class:`TranscoderValidationError` naming the file and key, as the reference
refuses them: a manifest ``format`` other than ``layer_weights`` ("Unsupported format"); a decoder
layout other than ``input_layer``/``output_layer`` ("Unsupported decoder layout"); missing norm
factors; ``jumprelu`` without ``activation.log_threshold``; a ``layer_weights`` key that is neither
known nor ``P_X_N`` ("Unknown key"). Also refused, before anything is allocated, where the
reference would fail later with a raw KeyError or shape error: missing or mis-shaped tensors,
a ``P_X_N`` whose N is not in the manifest's ``layer_indices``, an unknown ``dtype`` or
activation. And what circuit-tracer cannot represent or what would only give zeros: d_in !=
d_out, ``layer_indices`` not increasing or outside the model, hook points outside ``HOOKS``,
``topk``/``topk_all`` with k <= 0 (the reference's default k = 0 zeroes every feature), ``topk``
with k > d_latent (the reference's ``topk`` raises), non-finite thresholds, norm factors <= 0.

Conversion: norm factors are folded into the weights (``W_enc = (W / nf_in).T``,
``W_dec[i->j] *= nf_out[j]``, ``b_dec_j *= nf_out[j]``), each product computed in float32 and
rounded once to the config's ``dtype`` (the dtype the reference casts every tensor to), and
covered layer ``i`` is written at model layer ``layer_indices[i]``; model layers outside
``layer_indices`` get zero encoders and decoders (no feature fires there, so their MLP output is
all error node).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import TranscoderValidationError
from .safetensors_header import TensorInfo, read_header
from .validate import FLOAT_DTYPES, ModelFacts, check_finite

ACTIVATIONS = ("relu", "jumprelu", "topk", "topk_all")
LAYOUTS = ("input_layer", "output_layer")
DTYPES = ("float16", "float32", "float64", "bfloat16")  # the reference's _STR_TO_DTYPE
# layer_weights key -> state-dict key (the reference's _LAYER_KEY_TO_STATE_KEY).
LAYER_KEYS = {"W_enc": "encoder.W", "b_enc": "encoder.b", "norm_factor_in": "norm_factor_in",
              "norm_factor_out": "norm_factor_out", "log_threshold": "activation.log_threshold",
              "b_dec": "decoder.b", "W_dec_shared": "decoder.decoder.W"}
# Hook attributes (a module inside one decoder layer, and its port; the reference hooks HF
# modules by these names) -> circuit-tracer hook names.
HOOKS = {"mlp.input": "mlp.hook_in", "mlp.output": "mlp.hook_out",
         "post_attention_layernorm.output": "mlp.hook_in",
         "post_attention_layernorm.input": "hook_resid_mid"}
# v2 spelling of each config value, for error messages.
V2_KEYS = {"n_layers": "base_model.n_layers", "base_model_name": "base_model.name",
           "layer_indices": "base_model.hook_points.layer_indices",
           "input_attr": "base_model.hook_points.input.attr",
           "output_attr": "base_model.hook_points.output.attr",
           "d_in": "base_model.hook_points.input.dim", "d_out": "base_model.hook_points.output.dim",
           "d_latent": "architecture.d_latent", "activation": "architecture.activation.type",
           "k": "architecture.activation.k", "decoder_layout": "architecture.decoder.layout"}
_REQUIRED = object()


@dataclass(frozen=True)
class NativeConfig:
    folder: Path
    layout: str  # "single_file" | "layer_weights"
    version: int  # 1 | 2
    n_layers: int  # the base model's layers
    d_in: int
    d_out: int
    d_latent: int
    activation: str
    k: int
    decoder_layout: str
    base_model_name: str | None
    feature_input_hook: str
    feature_output_hook: str
    layer_indices: tuple[int, ...] | None
    dtype: str
    files: tuple[str, ...]  # the safetensors files read, in order (existing ones only)
    missing_files: tuple[str, ...] = ()  # listed in the manifest but absent (skipped)
    decoder_type: str | None = None  # manifest
    manifest_layer_indices: tuple[int, ...] | None = None

    @property
    def n_covered(self) -> int:
        return len(self.layer_indices) if self.layer_indices is not None else self.n_layers

    def key(self, name: str) -> str:
        """``name`` as spelled in this config version."""
        return V2_KEYS.get(name, name) if self.version == 2 else name


@dataclass(frozen=True)
class Source:
    """Where one state-dict tensor lives."""

    path: Path
    name: str  # tensor name inside the file
    info: TensorInfo


def is_native(folder: Path) -> bool:
    return (Path(folder) / "model_config.json").is_file()  # the reference's detection rule


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TranscoderValidationError(path, None, f"unreadable JSON ({exc})") from None


def _getter(path: Path, raw):
    def get(*keys, default=_REQUIRED):
        """raw[k1][k2]...; ``default`` only if the last key is absent (as ``dict.get``)."""
        node = raw
        for depth, key in enumerate(keys):
            if not isinstance(node, dict):
                raise TranscoderValidationError(path, ".".join(keys[:depth]) or None,
                                                "expected a JSON object")
            if key not in node:
                if default is _REQUIRED or depth < len(keys) - 1:
                    raise TranscoderValidationError(path, ".".join(keys[:depth + 1]),
                                                    "missing (BluelightAI's reader requires it)")
                return default
            node = node[key]
        return node
    return get


def _int(path, key, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TranscoderValidationError(path, key, f"{value!r} is not an integer")
    try:
        return int(value)
    except ValueError:
        raise TranscoderValidationError(path, key, f"{value!r} is not an integer") from None


def _indices(path, key, value, n_layers=None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise TranscoderValidationError(path, key, f"{value!r} is not a non-empty list of layers")
    li = tuple(_int(path, key, v) for v in value)
    if list(li) != sorted(set(li)) or li[0] < 0 or (n_layers is not None and li[-1] >= n_layers):
        bound = f" below n_layers {n_layers}" if n_layers is not None else ""
        raise TranscoderValidationError(path, key, f"{list(li)} must be increasing, distinct, "
                                        f"non-negative layers{bound}")
    return li


def _index_list(path, value) -> tuple[int, ...] | None:
    """The manifest's ``layer_indices``: only a map from saved layer numbers to positions."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise TranscoderValidationError(path, "layer_indices", f"{value!r} is not a list")
    return tuple(_int(path, "layer_indices", v) for v in value)


def _hook(path, key, attr, default):
    if attr is None:  # v1 may leave it out: then the registered release's hook
        if default is None:
            raise TranscoderValidationError(path, key, "not set, and no registered release to "
                                            "take the hook point from")
        return default
    if attr not in HOOKS:
        raise TranscoderValidationError(path, key, f"unsupported hook point {attr!r}; known: "
                                        f"{sorted(HOOKS)}")
    return HOOKS[attr]


def read_native_config(folder: str | Path, default_hooks: tuple[str, str] | None = None
                       ) -> NativeConfig:
    """``model_config.json`` (and ``manifest.json``) with the reference's defaults, checked.
    ``default_hooks`` (input, output) stand in for a v1 config without ``input_attr`` /
    ``output_attr`` (a registered release's hooks)."""
    folder = Path(folder)
    path = folder / "model_config.json"
    raw = _json(path)
    if not isinstance(raw, dict):
        raise TranscoderValidationError(path, None, "expected a JSON object")
    get = _getter(path, raw)
    version_raw = raw.get("config_version", 1)
    version = 2 if _int(path, "config_version", version_raw) == 2 else 1
    if version == 2:
        get("base_model", "hook_points", "input")
        get("base_model", "hook_points", "output")
        get("architecture", "decoder")
        f = dict(n_layers=get("base_model", "n_layers"), base_model_name=get("base_model", "name"),
                 layer_indices=get("base_model", "hook_points", "layer_indices", default=None),
                 input_attr=get("base_model", "hook_points", "input", "attr"),
                 output_attr=get("base_model", "hook_points", "output", "attr"),
                 d_in=get("base_model", "hook_points", "input", "dim"),
                 d_out=get("base_model", "hook_points", "output", "dim"),
                 d_latent=get("architecture", "d_latent"),
                 activation=get("architecture", "activation", "type"),
                 k=get("architecture", "activation", "k", default=0),
                 decoder_layout=get("architecture", "decoder", "layout", default="output_layer"))
    else:
        f = dict(n_layers=get("n_layers"), base_model_name=get("base_model_name", default=None),
                 layer_indices=get("layer_indices", default=None),
                 input_attr=get("input_attr", default=None),
                 output_attr=get("output_attr", default=None),
                 d_in=get("d_in"), d_out=get("d_in"), d_latent=get("d_latent"),
                 activation=get("activation"), k=get("k", default=0),
                 decoder_layout=get("decoder_layout", default="output_layer"))

    def key(name):
        return V2_KEYS[name] if version == 2 else name

    n_layers = _int(path, key("n_layers"), f["n_layers"])
    d_in, d_out = _int(path, key("d_in"), f["d_in"]), _int(path, key("d_out"), f["d_out"])
    d_latent = _int(path, key("d_latent"), f["d_latent"])
    k = _int(path, key("k"), f["k"])
    activation, layout = f["activation"], f["decoder_layout"]
    dtype = raw.get("dtype", "float32")
    if activation not in ACTIVATIONS:
        raise TranscoderValidationError(path, key("activation"), f"unsupported activation "
                                        f"{activation!r}; BluelightAI's reader knows "
                                        f"{list(ACTIVATIONS)}")
    if activation.startswith("topk") and k <= 0:
        raise TranscoderValidationError(path, key("k"), f"{activation} needs k > 0, got {k} (the "
                                        "default is 0, which would zero every feature)")
    if activation == "topk" and k > d_latent:
        raise TranscoderValidationError(path, key("k"), f"topk k = {k} exceeds d_latent {d_latent}")
    if layout not in LAYOUTS:
        raise TranscoderValidationError(path, key("decoder_layout"), f"unsupported decoder layout "
                                        f"{layout!r}; BluelightAI's reader knows {list(LAYOUTS)}")
    if dtype not in DTYPES:
        raise TranscoderValidationError(path, "dtype", f"{dtype!r} is not one of {list(DTYPES)}")
    if d_in != d_out:
        raise TranscoderValidationError(path, key("d_out"), f"d_in {d_in} != d_out {d_out}: a "
                                        "circuit-tracer CLT reads and writes one width")
    hooks = default_hooks or (None, None)
    common = dict(
        folder=folder, version=version, n_layers=n_layers, d_in=d_in, d_out=d_out,
        d_latent=d_latent, activation=activation, k=k, decoder_layout=layout,
        base_model_name=f["base_model_name"],
        feature_input_hook=_hook(path, key("input_attr"), f["input_attr"], hooks[0]),
        feature_output_hook=_hook(path, key("output_attr"), f["output_attr"], hooks[1]),
        layer_indices=_indices(path, key("layer_indices"), f["layer_indices"], n_layers),
        dtype=dtype)
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return NativeConfig(layout="single_file", files=("clt.safetensors",), **common)
    man = _json(manifest)
    mget = _getter(manifest, man)
    if mget("format", default=None) != "layer_weights":
        raise TranscoderValidationError(manifest, "format", f"unsupported format "
                                        f"{man.get('format')!r}; BluelightAI's reader reads only "
                                        "'layer_weights'")
    decoder_type, listed = mget("decoder_type"), mget("files")
    if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
        raise TranscoderValidationError(manifest, "files", f"{listed!r} is not a list of file "
                                        "names")
    return NativeConfig(
        layout="layer_weights", files=tuple(n for n in listed if (folder / n).exists()),
        missing_files=tuple(n for n in listed if not (folder / n).exists()),
        decoder_type=decoder_type,
        manifest_layer_indices=_index_list(manifest, mget("layer_indices", default=None)),
        **common)


def model_layers(cfg: NativeConfig) -> tuple[int, ...]:
    """The model layer of each covered layer."""
    return cfg.layer_indices if cfg.layer_indices is not None else tuple(range(cfg.n_layers))


def _state_key(path: Path, key: str, decoders: str, index: dict | None) -> str:
    """The reference's _saved_key_to_state_dict_key, with its failures as clear errors."""
    if key in LAYER_KEYS:
        return LAYER_KEYS[key]
    parts = key.split("_")
    try:
        param, _, layer_text = parts
        layer = int(layer_text)
    except ValueError:
        raise TranscoderValidationError(path, key, f"unknown key: neither one of "
                                        f"{list(LAYER_KEYS)} nor <param>_<name>_<layer> "
                                        "(BluelightAI's reader: 'Unknown key')") from None
    if index is not None:
        if layer not in index:
            raise TranscoderValidationError(path, key, f"layer {layer} is not in manifest.json's "
                                            f"layer_indices {list(index)}")
        layer = index[layer]
    return f"decoder.{decoders}.{layer}.{param}"


def state_dict_sources(cfg: NativeConfig) -> dict[str, Source]:
    """State-dict key -> where the reference would take it from (headers only)."""
    if cfg.layout == "single_file":
        path = cfg.folder / "clt.safetensors"
        return {name: Source(path, name, info) for name, info in read_header(path).items()}
    li = cfg.manifest_layer_indices
    index = None if li is None else {m: i for i, m in enumerate(li)}
    decoders = "decoders" if cfg.decoder_type in LAYOUTS else "layer_connections"
    out: dict[str, Source] = {}
    for name in cfg.files:
        path = cfg.folder / name
        # Sorted: the order safetensors' load_file yields keys in; a later key wins.
        for key, info in sorted(read_header(path).items()):
            out[_state_key(path, key, decoders, index)] = Source(path, key, info)
    return out


def _saved_name(cfg: NativeConfig, key: str) -> str:
    """How a layer_weights file spells state-dict ``key`` (for messages)."""
    for saved, state in LAYER_KEYS.items():
        if state == key:
            return saved
    parts = key.split(".")  # decoder.decoders.{i}.W
    i, li = int(parts[2]), cfg.manifest_layer_indices
    if li is None:
        return f"{parts[3]}_dec_{i}"
    if i < len(li):
        return f"{parts[3]}_dec_{li[i]}"
    return f"{parts[3]}_dec_<layer> at position {i} of manifest.json's layer_indices"


def _missing(cfg: NativeConfig, key: str, why: str = "") -> TranscoderValidationError:
    if cfg.layout == "single_file":
        return TranscoderValidationError(cfg.folder / "clt.safetensors", key,
                                         f"tensor is missing{why}")
    saved = _saved_name(cfg, key)
    hint = ""
    if key.startswith("decoder.decoders.") and cfg.decoder_type not in LAYOUTS:
        hint = (f"; manifest.json's decoder_type {cfg.decoder_type!r} maps per-layer keys to "
                "decoder.layer_connections.*")
    if cfg.missing_files:
        return TranscoderValidationError(
            cfg.folder / cfg.missing_files[0], None, f"file is missing: manifest.json lists it, "
            f"and no other listed file holds {saved} ({key}){why}{hint}")
    return TranscoderValidationError(cfg.folder / "manifest.json", key, f"no listed file holds "
                                     f"{saved}{why}{hint}")


def _read(src: Source):
    from safetensors import safe_open
    with safe_open(str(src.path), framework="pt") as f:
        return f.get_tensor(src.name)


def validate_native(cfg: NativeConfig, model: ModelFacts | None) -> dict[str, Source]:
    """Headers, shapes, dtypes, model fit, finite thresholds and norm factors, before any large
    read or write. Returns the state-dict sources."""
    cfg_path = cfg.folder / "model_config.json"
    if model is not None:
        if cfg.d_in != model.d_model:
            raise TranscoderValidationError(cfg_path, cfg.key("d_in"), f"d_in {cfg.d_in}, but "
                                            f"{model.name} has d_model {model.d_model}")
        if cfg.n_layers != model.n_layers:
            raise TranscoderValidationError(cfg_path, cfg.key("n_layers"), f"n_layers "
                                            f"{cfg.n_layers} (the base model's layers), but "
                                            f"{model.name} has {model.n_layers}")
    src = state_dict_sources(cfg)
    n, F, d = cfg.n_covered, cfg.d_latent, cfg.d_out

    def check(key, shape=None, why="", at_least=False):
        s = src.get(key)
        if s is None:
            raise _missing(cfg, key, why)
        if s.info.dtype not in FLOAT_DTYPES:
            raise TranscoderValidationError(s.path, s.name, f"dtype {s.info.dtype} is not a "
                                            "float type")
        got = tuple(s.info.shape)
        ok = shape is None or got == shape or (
            at_least and len(got) == 3 and got[0] >= shape[0] and got[1:] == shape[1:])
        if not ok:
            more = " or more rows" if at_least else ""
            raise TranscoderValidationError(s.path, s.name, f"shape {list(got)}, expected "
                                            f"{list(shape)}{more} ({key}, {n} covered layers)")
        return s

    check("encoder.W", (n, cfg.d_in, F))
    check("encoder.b", (n, F))
    small = []
    for key in ("norm_factor_in", "norm_factor_out"):
        s = check(key, why=" (BluelightAI's reader: 'Saved weights are missing normalization "
                  "factors')")
        if math.prod(s.info.shape) not in (1, n):
            raise TranscoderValidationError(s.path, s.name, f"shape {list(s.info.shape)}: "
                                            f"expected {n} values (one per covered layer) or 1")
        small.append(s)
    if cfg.activation == "jumprelu":
        small.append(check("activation.log_threshold", (n, F), why=" (jumprelu; BluelightAI's "
                           "reader: 'JumpReLU model missing activation.log_threshold')"))
    if "decoder.b" in src:
        check("decoder.b", (n, d))
    for i in range(n):
        if cfg.decoder_layout == "input_layer":
            check(f"decoder.decoders.{i}.W", (n - i, F, d))
        else:
            check(f"decoder.decoders.{i}.W", (i + 1, F, d), at_least=True)
    for s in small:  # a few KB: thresholds and factors must be finite, factors > 0
        t = _read(s)
        check_finite(s.path, s.name, t)
        if s.name.startswith("norm_factor") and not bool((t > 0).all()):
            raise TranscoderValidationError(s.path, s.name, "norm factor must be > 0")
    return src


def convert_native(cfg: NativeConfig, out: Path, n_model_layers: int | None = None) -> None:
    """Write the circuit-tracer layout of ``cfg`` into ``out`` for a model of ``n_model_layers``
    layers (default: the config's ``n_layers``), one layer at a time: the peak is one output
    decoder layer (d_latent x (n - l) x d_model in the stored dtype) plus one float32 row."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = state_dict_sources(cfg)
    n_model = cfg.n_layers if n_model_layers is None else n_model_layers
    cover = model_layers(cfg)
    if n_model <= cover[-1]:
        raise TranscoderValidationError(cfg.folder / "model_config.json", cfg.key("n_layers"),
                                        f"covers model layer {cover[-1]}, but the model has "
                                        f"{n_model} layers")
    dtype = getattr(torch, cfg.dtype)
    n, F, d = cfg.n_covered, cfg.d_latent, cfg.d_in
    where = {m: i for i, m in enumerate(cover)}  # model layer -> covered index
    handles = {}

    def rows(key):
        """Lazily sliced tensor ``key``: ``rows(key)[i]`` reads only row i."""
        s = src[key]
        if s.path not in handles:
            handles[s.path] = safe_open(str(s.path), framework="pt")
        return handles[s.path].get_slice(s.name)

    def factors(key):
        t = _read(src[key]).float().reshape(-1)
        return t.expand(n) if t.numel() == 1 else t

    def dec_row(i, j):
        """W_dec[covered i -> covered j], (F, d) float32."""
        if cfg.decoder_layout == "input_layer":
            return rows(f"decoder.decoders.{i}.W")[j - i].float()
        return rows(f"decoder.decoders.{j}.W")[i].float()

    nf_in, nf_out = factors("norm_factor_in"), factors("norm_factor_out")
    for m in range(n_model):
        i = where.get(m)
        enc = {}
        if i is None:
            enc[f"W_enc_{m}"] = torch.zeros(F, d, dtype=dtype)
            enc[f"b_enc_{m}"] = torch.zeros(F, dtype=dtype)
            enc[f"b_dec_{m}"] = torch.zeros(d, dtype=dtype)
        else:
            W = rows("encoder.W")[i].float() / nf_in[i]
            enc[f"W_enc_{m}"] = W.T.contiguous().to(dtype)
            enc[f"b_enc_{m}"] = rows("encoder.b")[i].to(dtype).contiguous()
            b_dec = rows("decoder.b")[i].float() if "decoder.b" in src else torch.zeros(d)
            enc[f"b_dec_{m}"] = (b_dec * nf_out[i]).to(dtype)
            del W
        if cfg.activation == "jumprelu":
            enc[f"threshold_{m}"] = (torch.zeros(F, dtype=dtype) if i is None else
                                     rows("activation.log_threshold")[i].float().exp().to(dtype))
        save_file(enc, str(out / f"W_enc_{m}.safetensors"))
        del enc
        W_dec = torch.zeros(F, n_model - m, d, dtype=dtype)
        if i is not None:
            for j in range(i, n):
                W_dec[:, cover[j] - m] = (dec_row(i, j) * nf_out[j]).to(dtype)
        save_file({f"W_dec_{m}": W_dec}, str(out / f"W_dec_{m}.safetensors"))
        del W_dec


def write_ct_layout(cfg: NativeConfig, out: Path, n_model_layers: int | None = None,
                    model_name=None) -> None:
    """Convert ``cfg`` into ``out`` and add the ``config.yaml`` circuit-tracer loads it with
    (hooks, activation and k, where it came from)."""
    import yaml
    convert_native(cfg, out, n_model_layers)
    activation = {"jumprelu": "jump_relu"}.get(cfg.activation, cfg.activation)
    (out / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": cfg.feature_input_hook,
        "feature_output_hook": cfg.feature_output_hook,
        "model_name": model_name, "activation": activation,
        "k": cfg.k if cfg.activation.startswith("topk") else None,
        "converted_from": str(cfg.folder), "source_layout": cfg.layout,
    }, sort_keys=False))
