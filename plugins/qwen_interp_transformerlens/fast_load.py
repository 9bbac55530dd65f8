"""Part ``fast-load``: dense Qwen3-layout checkpoints load into ``HookedTransformer`` at the size of
the model.

Upstream ``HookedTransformer.from_pretrained`` loads the HF model, converts it to a TL state dict,
upcasts *every* tensor to fp32 for weight processing (``ProcessWeights.process_weights``), clones
it (twice with ``fold_ln``), builds a randomly initialised ``HookedTransformer`` on the CPU and
copies the result into it, then moves it to the device: several full copies of the model.

Here, for the checkpoints of the model families that declare ``TL_FAST_LOAD`` (dense Qwen3
layout, e.g. ``Qwen3ForCausalLM``: registered repo id, alias, or local directory), the model is
built with its parameters on the meta device (buffers as upstream builds them, on the CPU), and
every parameter is produced once, directly in the target dtype on the
target device, from the safetensors files (read with ``pread``, tensor by tensor or row range by
row range, so neither a second copy nor memory-mapped file pages accumulate). TL's processing is
replicated op for op on the device, in fp32 chunks of bounded size, exactly as
``process_weights`` does it for this architecture (RMSNorm, gated MLP, GQA, zero biases):

- ``fold_ln``: ``W_Q/W_K/W_V *= ln1.w``, ``W_in/W_gate *= ln2.w``, ``W_U *= ln_final.w`` (fp32,
  rounded once to the target dtype); the norms become ``RMSNormPre`` as upstream;
- ``center_writing_weights``: a no-op for RMSNorm models upstream, likewise here;
- ``center_unembed``: ``W_U -= W_U.mean(vocab)``; ``b_U`` stays zero;
- ``fold_value_biases``: ``b_O += sum(b_V @ W_O)`` (b_V is zero for Qwen3).

Exactness: every elementwise step is bit-identical to upstream on any device. The only
reduction with real data is ``center_unembed``'s mean over the vocabulary: on the CPU with the
whole ``W_U`` in one chunk it is bit-identical (same layout and kernel); split in chunks (models
whose fp32 ``W_U`` exceeds the chunk budget) or on a GPU (upstream always processes on the CPU)
the summation order differs, so ``W_U`` may differ from upstream's by rounding of that mean
(measured: see tests/test_fast_load.py and benchmarks/README.md).

Falls back to upstream (unchanged behaviour) for: ``QWEN_INTERP_FAST_LOAD=0``, ``hf_model=``,
checkpoints (``checkpoint_index/value``), ``n_devices > 1``, ``refactor_factored_attn_matrices``,
float64, quantisation or other HF kwargs than cache_dir/revision/token/local_files_only/
torch_dtype, architectures of no ``TL_FAST_LOAD`` family (MoE included), configs outside the
replicated case (see ``_unsupported_cfg``), checkpoints without safetensors files, and subclasses
whose ``__init__`` adds parameters TL's Qwen3 state dict does not have.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

from qwen_interp import settings
from qwen_interp.patching import PatchSet
from qwen_interp.specs import TL_FAST_LOAD

from .families import local_checkpoint_architecture, models, needed

ENV = settings.FAST_LOAD.name
ENV_CHUNK_MB = settings.FAST_LOAD_CHUNK_MB.name
DEFAULT_CHUNK_MB = settings.FAST_LOAD_CHUNK_MB.default
HF_KWARGS = {"cache_dir", "revision", "token", "local_files_only"}
_ST_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}

log = logging.getLogger(__name__)
# Which path the last patched from_pretrained call took ("fast" or "upstream: <reason>").
last_path: str | None = None


class Unsupported(Exception):
    """This load is outside what the fast path replicates: use upstream."""


def enabled() -> bool:
    return settings.FAST_LOAD.get()


def chunk_bytes() -> int:
    return max(1, int(settings.FAST_LOAD_CHUNK_MB.get() * 2**20))


# --- safetensors, read with pread --------------------------------------------------------------
class SafetensorsFiles:
    """Tensor headers of one checkpoint's safetensors files; reads whole tensors or row ranges
    into fresh CPU tensors (no mmap: pages of the file do not stay mapped into the process)."""

    def __init__(self, files: list[Path]) -> None:
        self.entries: dict[str, tuple[Path, int, str, list[int]]] = {}
        for path in files:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if meta["dtype"] not in _ST_DTYPES:
                    raise Unsupported(f"safetensors dtype {meta['dtype']} of {name}")
                self.entries[name] = (path, 8 + n + meta["data_offsets"][0], meta["dtype"],
                                      meta["shape"])

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> list[int]:
        return self.entries[name][3]

    def read(self, name: str, rows: tuple[int, int] | None = None):
        import torch
        path, offset, st_dtype, shape = self.entries[name]
        dtype = getattr(torch, _ST_DTYPES[st_dtype])
        row = dtype.itemsize
        for s in shape[1:]:
            row *= s
        r0, r1 = rows if rows is not None else (0, shape[0] if shape else 1)
        out = torch.empty((r1 - r0) * row, dtype=torch.uint8)
        view = memoryview(out.numpy())
        fd = os.open(path, os.O_RDONLY)
        try:
            done, start = 0, offset + r0 * row
            while done < len(view):
                got = os.preadv(fd, [view[done:]], start + done)
                if got <= 0:
                    raise OSError(f"short read of {name} in {path}")
                done += got
        finally:
            os.close(fd)
        return out.view(dtype).reshape([r1 - r0, *shape[1:]] if shape else [])


def checkpoint_files(official: str, hf_kwargs: dict) -> list[Path]:
    """The safetensors files of a local directory or a Hub repo (offline cache honoured)."""
    local = Path(official)
    if local.is_dir():
        def fetch(fname):
            p = local / fname
            if not p.is_file():
                raise FileNotFoundError(p)
            return p
    else:
        from huggingface_hub import hf_hub_download

        def fetch(fname):
            return Path(hf_hub_download(official, fname, **hf_kwargs))
    try:
        index = fetch("model.safetensors.index.json")
    except Exception:  # noqa: BLE001 - absent (or not cached offline): single file
        index = None
    if index is not None:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [fetch(n) for n in names]
    try:
        return [fetch("model.safetensors")]
    except Exception as e:  # noqa: BLE001
        raise Unsupported(f"no safetensors weights found for {official}: {e}") from e


# --- building the model without initialising it -------------------------------------------------
@contextlib.contextmanager
def parameters_on_meta():
    """While constructing: every parameter registered goes to the meta device (buffers stay as
    the constructor builds them). Only the constructor's own allocations happen (untouched
    ``torch.empty`` pages, small ``zeros``/``ones``), released at once."""
    import torch
    original = torch.nn.Module.register_parameter

    def register_parameter(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def _unsupported_cfg(cfg, fold_ln: bool, archs: frozenset[str]) -> str | None:
    import torch
    checks = {
        "architecture": cfg.original_architecture in archs,
        "dtype": cfg.dtype in (torch.float32, torch.bfloat16, torch.float16),
        # get_pretrained_model_config already turns RMS into RMSPre when fold_ln
        "normalization": cfg.normalization_type == ("RMSPre" if fold_ln else "RMS"),
        "rotary": cfg.positional_embedding_type == "rotary",
        "gated mlp": bool(cfg.gated_mlp) and not cfg.attn_only and not cfg.parallel_attn_mlp,
        "dense": not (cfg.num_experts or 0),
        "qk norm": bool(getattr(cfg, "use_qk_norm", False)),
        "no rmsnorm offset": not getattr(cfg, "rmsnorm_uses_offset", False),
        "no soft cap": not (cfg.output_logits_soft_cap and cfg.output_logits_soft_cap > 0),
        "not 4bit": not cfg.load_in_4bit,
        "one device": cfg.n_devices == 1,
        # upstream picks the broadcast axis from shapes; these coincidences flip it
        "d_mlp != d_model": cfg.d_mlp != cfg.d_model,
        "d_vocab != d_model": cfg.d_vocab != cfg.d_model,
    }
    bad = [k for k, ok in checks.items() if not ok]
    return ", ".join(bad) if bad else None


class _Loader:
    """Produces each TL parameter of one dense Qwen3-layout checkpoint on ``device`` in
    ``dtype``."""

    def __init__(self, files: SafetensorsFiles, cfg, device, dtype, tied: bool) -> None:
        self.f, self.cfg, self.device, self.dtype, self.tied = files, cfg, device, dtype, tied
        self.budget = chunk_bytes()

    def raw(self, name: str):
        """A whole checkpoint tensor on the device in the target dtype (HF's load cast)."""
        if name not in self.f:
            raise Unsupported(f"checkpoint has no {name}")
        return self.f.read(name).to(device=self.device, dtype=self.dtype)

    def empty(self, shape):
        import torch
        return torch.empty(shape, dtype=self.dtype, device=self.device)

    def zeros(self, *shape):
        import torch
        return torch.zeros(*shape, dtype=self.dtype, device=self.device)

    def scaled(self, src, ln, ln_dim: int):
        """``(src.float() * ln.float() broadcast on ln_dim).to(dtype)``, in fp32 chunks over
        dim 0 (elementwise: bit-identical to upstream whatever the chunking)."""
        out = self.empty(src.shape)
        lnf = ln.float()
        per_row = 4 * max(1, src[0].numel()) if src.dim() else 4
        step = max(1, self.budget // per_row)
        for i0 in range(0, src.shape[0], step):
            i1 = min(src.shape[0], i0 + step)
            x = src[i0:i1].float()
            if ln_dim == 0:
                x.mul_(lnf[i0:i1].reshape([-1] + [1] * (src.dim() - 1)))
            else:
                shape = [1] * src.dim()
                shape[ln_dim] = -1
                x.mul_(lnf.reshape(shape))
            out[i0:i1].copy_(x)
            del x
        return out

    def contiguous(self, src):
        out = self.empty(src.shape)
        out.copy_(src)
        return out

    # -- the pieces -----------------------------------------------------------------------
    def layer(self, l: int, fold_ln: bool, fold_value_biases: bool) -> dict:
        cfg = self.cfg
        p = f"model.layers.{l}."
        n, h = cfg.n_heads, cfg.d_head
        kv = cfg.n_key_value_heads if cfg.n_key_value_heads is not None else n
        g = "_" if cfg.n_key_value_heads is not None else ""
        b = f"blocks.{l}."
        out = {}
        ln1 = self.raw(p + "input_layernorm.weight")
        ln2 = self.raw(p + "post_attention_layernorm.weight")
        for key, proj, heads in (("W_Q", "q_proj", n), (g + "W_K", "k_proj", kv),
                                 (g + "W_V", "v_proj", kv)):
            w = self.raw(p + f"self_attn.{proj}.weight")
            w = w.view(heads, h, w.shape[-1]).permute(0, 2, 1)  # "(n h) m -> n m h"
            out[b + "attn." + key] = self.scaled(w, ln1, 1) if fold_ln else self.contiguous(w)
            del w
        o = self.raw(p + "self_attn.o_proj.weight")
        W_O = self.contiguous(o.view(o.shape[0], n, h).permute(1, 2, 0))  # "m (n h) -> n h m"
        del o
        out[b + "attn.W_O"] = W_O
        out[b + "attn.q_norm.w"] = self.raw(p + "self_attn.q_norm.weight")
        out[b + "attn.k_norm.w"] = self.raw(p + "self_attn.k_norm.weight")
        out[b + "attn.b_Q"] = self.zeros(n, h)
        out[b + f"attn.{g}b_K"] = self.zeros(kv, h)
        b_V = self.zeros(kv, h)
        out[b + f"attn.{g}b_V"] = b_V
        b_O = self.zeros(cfg.d_model)
        if fold_value_biases:
            # ProcessWeights.fold_value_biases in fp32: b_O + (repeat(b_V)[:, :, None] * W_O).sum
            import torch
            bv = b_V.float()
            if cfg.n_key_value_heads is not None:
                bv = torch.repeat_interleave(bv, dim=0, repeats=n // kv)
            b_O = (b_O.float() + (bv[:, :, None] * W_O.float()).sum([0, 1])).to(self.dtype)
            b_V.zero_()
        out[b + "attn.b_O"] = b_O
        for key, proj, ln in (("W_in", "up_proj", ln2), ("W_gate", "gate_proj", ln2),
                              ("W_out", "down_proj", None)):
            w = self.raw(p + f"mlp.{proj}.weight").T
            out[b + "mlp." + key] = (self.scaled(w, ln, 0) if fold_ln and ln is not None
                                     else self.contiguous(w))
            del w
        out[b + "mlp.b_in"] = self.zeros(cfg.d_mlp)
        out[b + "mlp.b_out"] = self.zeros(cfg.d_model)
        if not fold_ln:
            out[b + "ln1.w"], out[b + "ln2.w"] = ln1, ln2
        return out

    def embed_unembed(self, fold_ln: bool, center_unembed: bool) -> dict:
        import torch
        cfg = self.cfg
        emb, head = "model.embed_tokens.weight", ("model.embed_tokens.weight" if self.tied
                                                  else "lm_head.weight")
        for name in {emb, head}:
            if name not in self.f:
                raise Unsupported(f"checkpoint has no {name}")
        V, d = self.f.shape(emb)
        W_E, W_U = self.empty((V, d)), self.empty((d, V))
        rows = max(1, self.budget // (4 * d))
        for r0 in range(0, V, rows):
            r1 = min(V, r0 + rows)
            chunk = self.f.read(emb, (r0, r1)).to(device=self.device, dtype=self.dtype)
            W_E[r0:r1].copy_(chunk)
            if head != emb:
                chunk = self.f.read(head, (r0, r1)).to(device=self.device, dtype=self.dtype)
            W_U[:, r0:r1].copy_(chunk.T)
            del chunk
        ln = self.raw("model.norm.weight")
        out = {"embed.W_E": W_E, "unembed.W_U": W_U, "unembed.b_U": self.zeros(cfg.d_vocab_out)}
        if fold_ln or center_unembed:
            # Upstream: W_U = lm_head.weight.T (a transposed view) -> fp32 -> * ln_final.w[:, None]
            # -> - mean(-1). The fp32 working copy keeps that layout ((V, c) storage, viewed
            # transposed) so the CPU mean runs the same kernel; all of W_U in one chunk when it
            # fits the budget, else column blocks aligned to 64 (CPU kernel vector groups).
            cols = d if 4 * V * d <= self.budget else max(64, (self.budget // (4 * V)) // 64 * 64)
            lnf = ln.float()
            for c0 in range(0, d, cols):
                c1 = min(d, c0 + cols)
                buf = torch.empty((V, c1 - c0), dtype=torch.float32, device=self.device)
                buf.copy_(W_U[c0:c1].T)
                x = buf.T
                if fold_ln:
                    x.mul_(lnf[c0:c1, None])
                if center_unembed:
                    x.sub_(x.mean(-1, keepdim=True))
                W_U[c0:c1].copy_(x)
                del buf, x
        if not fold_ln:
            out["ln_final.w"] = ln
        return out


def load(upstream, cls, model_name, *, fold_ln, center_writing_weights, center_unembed,
         fold_value_biases, device, tokenizer, move_to_device, default_prepend_bos,
         default_padding_side, dtype, first_n_layers, n_ctx, hf_kwargs, torch_dtype_kw, archs):
    """The fast path proper (arguments already vetted by ``apply``'s wrapper); ``archs``: the
    architectures of the ``TL_FAST_LOAD`` families."""
    import torch
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens.utilities import get_best_available_device

    official = loading.get_official_model_name(model_name)
    cfg = loading.get_pretrained_model_config(
        official, hf_cfg={}, checkpoint_index=None, checkpoint_value=None, fold_ln=fold_ln,
        device=device, n_devices=1, default_prepend_bos=default_prepend_bos, dtype=dtype,
        first_n_layers=first_n_layers, n_ctx=n_ctx, **hf_kwargs, **torch_dtype_kw)
    why = _unsupported_cfg(cfg, fold_ln, archs)
    if why:
        raise Unsupported(why)
    files = SafetensorsFiles(checkpoint_files(official, hf_kwargs))
    from transformers import AutoConfig
    local = Path(official).is_dir()
    hf_cfg = AutoConfig.from_pretrained(str(Path(official).resolve()) if local else official,
                                        **hf_kwargs)
    tied = bool(getattr(hf_cfg, "tie_word_embeddings", False))

    with parameters_on_meta():
        model = cls(cfg, tokenizer, move_to_device=False,
                    default_padding_side=default_padding_side)
    if cfg.dtype not in (torch.float32, torch.float64) and fold_ln:
        logging.warning("With reduced precision, it is advised to use "
                        "`from_pretrained_no_processing` instead of `from_pretrained`.")
    # With fold_ln the config is already RMSPre (get_pretrained_model_config), so the model has
    # RMSNormPre norms and load_and_process_state_dict swaps nothing; the folded weights follow.
    target = torch.device(get_best_available_device(cfg)) if move_to_device else torch.device("cpu")
    loader = _Loader(files, cfg, target, cfg.dtype, tied)
    expected = dict(model.named_parameters())

    def assign(tensors: dict) -> None:
        for name, t in tensors.items():
            if name not in expected:
                raise Unsupported(f"{cls.__name__} has no parameter {name}")
            old = expected.pop(name)
            if tuple(old.shape) != tuple(t.shape):
                raise Unsupported(f"{name}: {tuple(t.shape)} vs model {tuple(old.shape)}")
            module, _, attr = name.rpartition(".")
            model.get_submodule(module)._parameters[attr] = torch.nn.Parameter(
                t, requires_grad=old.requires_grad)

    assign(loader.embed_unembed(fold_ln, center_unembed))
    for l in range(cfg.n_layers):
        assign(loader.layer(l, fold_ln, fold_value_biases))
    if expected:
        raise Unsupported(f"{cls.__name__} has parameters the checkpoint does not fill: "
                          f"{sorted(expected)[:5]}")
    if fold_ln:
        model.setup()
    if move_to_device:
        model.move_model_modules_to_device()
    print(f"Loaded pretrained model {model_name} into HookedTransformer")
    return model


def _set_last(value: str) -> None:
    global last_path
    last_path = value


def apply(patches: PatchSet, registry: Any) -> str:
    """Route ``HookedTransformer.from_pretrained`` (and subclasses) through ``load`` for the
    checkpoints of the ``TL_FAST_LOAD`` families; everything else, and any unsupported option,
    goes to the upstream classmethod unchanged. Undo restores the original classmethod object."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    archs = needed(registry, TL_FAST_LOAD)
    repo_ids = {spec.repo_id for spec in models(registry, TL_FAST_LOAD)}
    original = HookedTransformer.__dict__["from_pretrained"]
    upstream = original.__func__
    signature = inspect.signature(upstream)

    @functools.wraps(upstream)
    def from_pretrained(cls, model_name, *args, **kwargs):
        if not enabled():
            _set_last(f"upstream: {ENV}=0")
            return upstream(cls, model_name, *args, **kwargs)
        try:
            bound = signature.bind(cls, model_name, *args, **kwargs)
        except TypeError:
            return upstream(cls, model_name, *args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        extra = dict(a.pop("from_pretrained_kwargs", {}))
        torch_dtype_kw = {"torch_dtype": extra.pop("torch_dtype")} if "torch_dtype" in extra else {}
        reason = None
        if a["hf_model"] is not None:
            reason = "hf_model given"
        elif a["checkpoint_index"] is not None or a["checkpoint_value"] is not None:
            reason = "training checkpoints"
        elif a["n_devices"] != 1:
            reason = "n_devices > 1"
        elif a["refactor_factored_attn_matrices"]:
            reason = "refactor_factored_attn_matrices"
        elif set(extra) - HF_KWARGS:
            reason = f"kwargs {sorted(set(extra) - HF_KWARGS)}"
        elif not isinstance(model_name, str):
            reason = "model name not a string"
        else:
            try:
                official = loading.get_official_model_name(model_name)
            except Exception:  # noqa: BLE001 - let upstream raise its own error
                official = None
            if not (official in repo_ids
                    or local_checkpoint_architecture(model_name) in archs):
                reason = "not a checkpoint of a fast-load model family"
        if reason is None:
            dtype = a["dtype"]
            if isinstance(dtype, str):
                import sys  # the package attribute is the class; the module holds the table
                dtype = sys.modules["transformer_lens.HookedTransformer"].DTYPE_FROM_STRING[dtype]
            if torch_dtype_kw:
                dtype = torch_dtype_kw["torch_dtype"]
            try:
                model = load(upstream, cls, model_name, fold_ln=a["fold_ln"],
                            center_writing_weights=a["center_writing_weights"],
                            center_unembed=a["center_unembed"],
                            fold_value_biases=a["fold_value_biases"], device=a["device"],
                            tokenizer=a["tokenizer"], move_to_device=a["move_to_device"],
                            default_prepend_bos=a["default_prepend_bos"],
                            default_padding_side=a["default_padding_side"], dtype=dtype,
                            first_n_layers=a["first_n_layers"], n_ctx=a["n_ctx"],
                            hf_kwargs=extra, torch_dtype_kw=torch_dtype_kw, archs=archs)
                _set_last("fast")
                return model
            except Unsupported as e:
                reason = str(e)
        log.info("fast load not used for %s (%s): upstream from_pretrained", model_name, reason)
        _set_last(f"upstream: {reason}")
        return upstream(cls, model_name, *args, **kwargs)

    patches.setattr(HookedTransformer, "from_pretrained", classmethod(from_pretrained),
                    restore=original)
    return (f"{', '.join(sorted(archs))}: safetensors -> device, no fp32 copy; default, "
            f"{ENV}=0 for upstream's path")
