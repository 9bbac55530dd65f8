"""Benchmark (not a test): one shared pass vs the three tools run separately.

Qwen3-1.7B-Base shapes with random weights (bf16), a BluelightAI-size CLT encoder (28 x 20,480,
bf16, JumpReLU thresholds calibrated to L0 ~ 115) and a Qwen-Scope-size SAE on every layer
(28 x 2048 x 32,768, fp32, top-50, as published). Batch of 4 x 256 random tokens. Both paths get
logits, CLT features on all 28 layers and SAE features on all 28 layers, dense:

  separate: TransformerLens HookedTransformer forward (logits) + SAELens HookedSAETransformer
            run_with_cache_with_saes(saes=all 28, use_error_term=True, names_filter=acts_post)
            + circuit-tracer get_activations (CLT features): three models in memory.
  shared:   qwen_interp Session.run: one model, one pass.

The CLT encoder and the SAEs are built once and used by both paths (they are not the model).
Peak GPU memory is measured per path with only that path's models loaded. JSON lines go to
$OUT/shared_session.jsonl. Run on the GPU machine (see benchmarks/README.md):

  python benchmarks/shared_session.py
  python benchmarks/shared_session.py --small    # CPU smoke: tiny model, CLT and SAEs, fp32;
                                                 # agreement only, no timing value
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time
from pathlib import Path

from _common import (QWEN3_1_7B_BASE, import_sae_lens, jsonl_logger, random_qwen3_snapshot,
                     small_qwen3, use_checkout_plugins)

SMALL = "--small" in sys.argv
WORK = Path(os.environ.get("SESSION_BENCH_DIR",
                           "/tmp/sessionbench-small" if SMALL else "/tmp/sessionbench"))
os.environ["HF_HOME"] = str(WORK / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("QWEN_INTERP_CACHE", str(WORK / "qwen-interp-cache"))
MODEL = "Qwen/Qwen3-1.7B-Base"
RELEASE = "qwen-scope-3-1.7b-base-w32k-l50"
CONFIG = small_qwen3() if SMALL else QWEN3_1_7B_BASE
L, D = CONFIG["num_hidden_layers"], CONFIG["hidden_size"]
F, TARGET_L0 = (64, 8.0) if SMALL else (20480, 115.0)  # CLT features per layer, L0 calibrated
BATCH, SEQ, WARMUP, ITERS = (2, 32, 0, 1) if SMALL else (4, 256, 2, 5)
DEVICE = "cpu" if SMALL else "cuda"


log = jsonl_logger("shared_session.jsonl")


def activate_plugins():
    """The project from the checkout; plugins registered by hand when not pip-installed."""
    import_sae_lens()  # the GPU machine has no wandb
    return use_checkout_plugins("qwen_interp_qwen3", "qwen_interp_transformerlens",
                                "qwen_interp_circuit_tracer", "qwen_interp_saelens")


def build_model() -> None:
    random_qwen3_snapshot(WORK / "hf", MODEL, CONFIG, "float32" if SMALL else "bfloat16")


def dtype():
    import torch
    return torch.float32 if SMALL else torch.bfloat16


def build_clt(model, tokens):
    """A CLT encoder in memory (the decoder is not used by either path), thresholds calibrated
    on the model's own MLP inputs."""
    import torch
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
    clt = CrossLayerTranscoder(L, F, D, activation_function="jump_relu", lazy_decoder=True,
                               feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                               device=torch.device(DEVICE), dtype=dtype(), clt_path=None)
    mlp_in = {}
    hooks = [(f"blocks.{l}.ln2.hook_normalized",
              lambda a, hook, l=l: mlp_in.__setitem__(l, (a * model.blocks[l].ln2.w)[0].float()))
             for l in range(L)]
    with torch.no_grad():
        model.run_with_hooks(tokens[:1], fwd_hooks=hooks)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    with torch.no_grad():
        for l in range(L):
            x = mlp_in[l][1:]
            W = torch.randn(F, D, device=DEVICE, generator=g) / D ** 0.5 / x.norm(dim=-1).mean()
            thr = torch.quantile((x @ W.T).flatten()[:10_000_000], 1 - TARGET_L0 / F)
            clt.W_enc[l] = W.to(dtype())
            clt.activation_function.threshold[l] = thr.clamp_min(1e-3).to(dtype())
    return clt


def build_saes(registry):
    import torch
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

    from qwen_interp.specs import SAERelease
    from qwen_interp_saelens.loader import sae_config
    release = registry.sae_releases[RELEASE]
    if SMALL:  # Qwen-Scope's format at the stand-in's width; built in memory, never registered
        release = SAERelease(release="bench-small", repo_id="bench/small-sae",
                             model_repo_id=MODEL, d_model=D, d_sae=256, k=8, n_layers=L)
    saes = []
    g = torch.Generator(device=DEVICE).manual_seed(2)
    for layer in range(L):
        sae = SAE.from_dict(handle_config_defaulting(sae_config(registry, release, layer,
                                                                device=DEVICE)))
        with torch.no_grad():
            sae.W_dec.copy_(torch.randn(sae.W_dec.shape, device=DEVICE, generator=g) / D ** 0.5)
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        saes.append(sae)
    return saes


def sae_agreement(ref, got) -> dict:
    """Top-k sets can flip under bf16 rounding of the residual (SAELens splices each SAE back in
    with its error term, which rounds); report how often, and the values where both agree."""
    both = (ref > 0) & (got > 0)
    return {"active_set_jaccard": round(float(both.sum() / ((ref > 0) | (got > 0)).sum()), 4),
            "max_abs_diff_where_both_active": float((ref - got)[both].abs().max()),
            "max_rel_diff_where_both_active": float(((ref - got)[both].abs() / ref[both]).max())}


def sync() -> None:
    import torch
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def gpu_bytes(peak: bool = False) -> int:
    """CUDA memory allocated (or its peak); 0 on the CPU, where the smoke mode measures none."""
    import torch
    if DEVICE != "cuda":
        return 0
    return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()


def bench(fn):
    for _ in range(WARMUP):
        fn()
    sync()
    t0 = time.time()
    for _ in range(ITERS):
        out = fn()
    sync()
    return (time.time() - t0) / ITERS, out


def main() -> None:
    import torch
    registry = activate_plugins()
    build_model()
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel)
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformer

    from qwen_interp.apps.session import Session, shared_model_class
    processing = dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                      device=DEVICE, dtype=dtype())
    tokens = torch.randint(0, 150000, (BATCH, SEQ), device=DEVICE,
                           generator=torch.Generator(device=DEVICE).manual_seed(3))
    tokens[:, 0] = 151643  # circuit-tracer's first position

    calib = HookedTransformer.from_pretrained(MODEL, **processing)
    clt = build_clt(calib, tokens)
    del calib
    saes = build_saes(registry)
    gc.collect()
    torch.cuda.empty_cache()
    base = gpu_bytes()
    log(phase="setup", small=SMALL, clt_and_saes_gb=round(base / 1e9, 2), batch=BATCH, seq=SEQ)

    # --- shared ------------------------------------------------------------------------------
    reset_peak()
    t0 = time.time()
    model = shared_model_class(True).from_pretrained_and_transcoders(
        MODEL, clt, device=torch.device(DEVICE), dtype=dtype())
    session = Session(model)
    for sae in saes:
        session.add_sae(sae)
    load_s = time.time() - t0
    # partial, not a lambda over `session`: linters take the `del session` below to leave the
    # lambda's name undefined
    dt, shared = bench(functools.partial(session.run, tokens))
    dt_sparse, _ = bench(functools.partial(session.run, tokens, sparse=True))
    shared_peak = gpu_bytes(peak=True) - base
    shared_out = (shared.logits.float().log_softmax(-1)[:, -1].cpu(),
                  shared.clt_features[:, :, 1:].float().cpu(),
                  {n: shared.sae_features[n].float().cpu() for n in sorted({0, L // 2 - 1, L - 1})})
    log(path="shared", load_s=round(load_s, 1), s_per_batch=round(dt, 4),
        tok_s=round(BATCH * SEQ / dt), tok_s_sparse=round(BATCH * SEQ / dt_sparse),
        peak_gpu_gb_above_dictionaries=round(shared_peak / 1e9, 2))
    del session, model, shared
    gc.collect()
    torch.cuda.empty_cache()

    # --- separate ----------------------------------------------------------------------------
    reset_peak()
    t0 = time.time()
    tl = HookedTransformer.from_pretrained(MODEL, **processing)
    hst = HookedSAETransformer.from_pretrained(MODEL, **processing)
    ct = TransformerLensReplacementModel.from_pretrained_and_transcoders(
        MODEL, clt, device=torch.device(DEVICE), dtype=dtype())
    load_s = time.time() - t0
    names = {f"blocks.{n}.hook_resid_post.hook_sae_acts_post" for n in range(L)}

    def separate():
        with torch.no_grad():
            logits = tl(tokens)
            _, cache = hst.run_with_cache_with_saes(tokens, saes=saes, use_error_term=True,
                                                    names_filter=lambda n: n in names)
            _, clt_acts = ct.get_activations(tokens)
        return logits, cache, clt_acts

    dt_sep, (logits, cache, clt_acts) = bench(separate)
    sep_peak = gpu_bytes(peak=True) - base
    log(path="separate", load_s=round(load_s, 1), s_per_batch=round(dt_sep, 4),
        tok_s=round(BATCH * SEQ / dt_sep),
        peak_gpu_gb_above_dictionaries=round(sep_peak / 1e9, 2))
    sep_logp = logits.float().log_softmax(-1)[:, -1].cpu()
    diffs = dict(
        logprob_last_pos=float((sep_logp - shared_out[0]).abs().max()),
        # circuit-tracer's get_activations is written for one prompt: its `acts[zero_positions]
        # = 0` on a (batch, pos, features) tensor zeroes all of batch row 0. Compare rows >= 1
        # at positions >= 1 (the session zeroes position 0 of every row).
        clt=float((clt_acts[:, 1:, 1:].float().cpu() - shared_out[1][:, 1:]).abs().max()),
        clt_reference_max_abs=float(clt_acts[:, 1:, 1:].float().abs().max()),
        sae={n: sae_agreement(
                 cache[f"blocks.{n}.hook_resid_post.hook_sae_acts_post"].float().cpu(), v)
             for n, v in shared_out[2].items()})
    log(phase="compare", small=SMALL, speedup=round(dt_sep / dt, 2),
        peak_ratio=round(sep_peak / shared_peak, 2) if shared_peak else None, max_abs_diff=diffs)


if __name__ == "__main__":
    main()
