"""Benchmark (not a test): BluelightAI-size CLT in circuit-tracer, qwen-interp vs plain upstream.

Real Qwen3-1.7B-Base shapes with random weights (d_model 2048, 28 layers), a CLT of
28 x 20,480 features in bf16 in the hub layout (~36 GB on disk), thresholds calibrated so
L0 ~ 115 features per layer and token, the seed prompt. Both sides load the *same files* by
repo id from an offline HF cache, each in its own process (so peak host memory is its own):

  upstream: circuit-tracer as installed (only the Base name appended to TL's model list, as
            BluelightAI's fork does) -> ReplacementModel.from_pretrained(model, repo id)
  ours:     import qwen_interp -> ReplacementModel.from_pretrained(model, "bluelight-qwen3-1.7b")
            (alias lookup, header validation incl. finite thresholds, then upstream load_clt)

Measured per side: transcoder+model load time, peak GPU memory after load, peak host RSS,
L0 on the prompt, attribute() time and peak GPU memory (batch_size 256, max_feature_nodes 8192,
lazy decoder as from_pretrained defaults), graph size. JSON lines go to $OUT/clt_bench.jsonl.

Run on the GPU machine (see benchmarks/README.md):
  python benchmarks/clt_load_attribute.py            # build (once) + both sides
  python benchmarks/clt_load_attribute.py measure ours|upstream
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import QWEN3_1_7B_BASE, jsonl_logger, snapshot_dir, use_checkout_plugins

WORK = Path(os.environ.get("CLT_BENCH_DIR", "/tmp/cltbench"))
HF_HOME = WORK / "hf"
os.environ["HF_HOME"] = str(HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("QWEN_INTERP_CACHE", str(WORK / "qwen-interp-cache"))
MODEL = "Qwen/Qwen3-1.7B-Base"
RELEASE = "bluelightai/clt-qwen3-1.7b-base-20k"
PROMPT = "Fact: The president of the United States in 2010 was"
L, D, F = 28, 2048, 20480
# Active features per layer and token the thresholds are calibrated for (attribution_memory.py
# uses 80; this script's recorded results used 115).
TARGET_L0 = float(os.environ.get("TARGET_L0", "115"))


log = jsonl_logger("clt_bench.jsonl")


def snapshot(repo: str) -> Path:
    return snapshot_dir(HF_HOME, repo)


def build(device: str = "cuda", model_kwargs: dict | None = None, dtype_name: str = "bfloat16",
          n_latent: int = F) -> None:
    """Random model and calibrated CLT in the offline cache, once. Defaults: real 1.7B shapes on
    the GPU; attribution_memory.py --cpu-mid passes smaller ones."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM
    dev, dtype = torch.device(device), getattr(torch, dtype_name)
    cfg = Qwen3Config(**(model_kwargs or QWEN3_1_7B_BASE))
    L, D, F = cfg.num_hidden_layers, cfg.hidden_size, n_latent  # noqa: N806
    s = snapshot_dir(HF_HOME, MODEL, tokenizer=True)
    clt = snapshot(RELEASE)
    if (s / "config.json").exists() and (clt / "config.yaml").exists():
        return  # built by an earlier run: do not load the model just to find that out
    t0 = time.time()
    if not (s / "config.json").exists():
        torch.manual_seed(0)
        with torch.device(dev):
            model = Qwen3ForCausalLM(cfg).to(dtype)
        model.save_pretrained(s)
    else:
        model = Qwen3ForCausalLM.from_pretrained(s, dtype=dtype).to(dev)
    tok = AutoTokenizer.from_pretrained(str(s))
    ids = torch.tensor([[151643] + tok(PROMPT).input_ids], device=dev)
    mlp_in = {}
    hooks = [model.model.layers[l].mlp.register_forward_hook(
        lambda m, a, o, l=l: mlp_in.__setitem__(l, a[0][0].float())) for l in range(L)]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    g = torch.Generator(device=dev).manual_seed(1)
    for l in range(L):
        x = mlp_in[l][1:]  # calibrate on real positions (position 0 is zeroed by circuit-tracer)
        W = torch.randn(F, D, device=dev, generator=g) / D ** 0.5 / x.norm(dim=-1).mean()
        pre = x @ W.T
        thr = torch.quantile(pre.flatten(), 1 - TARGET_L0 / F).clamp_min(1e-3)
        thr_vec = thr * (1 + 0.02 * torch.randn(F, device=dev, generator=g))
        save_file({f"W_enc_{l}": W.to(dtype).contiguous(),
                   f"b_enc_{l}": torch.zeros(F, device=dev, dtype=dtype),
                   f"threshold_{l}": thr_vec.to(dtype).contiguous(),
                   f"b_dec_{l}": torch.zeros(D, device=dev, dtype=dtype)},
                  str(clt / f"W_enc_{l}.safetensors"))
        Wd = torch.randn(F, L - l, D, device=dev, generator=g, dtype=dtype) * 0.01
        save_file({f"W_dec_{l}": Wd}, str(clt / f"W_dec_{l}.safetensors"))
        del Wd, W, pre
    (clt / "config.yaml").write_text(
        "model_kind: cross_layer_transcoder\nfeature_input_hook: mlp.hook_in\n"
        f"feature_output_hook: mlp.hook_out\nmodel_name: {MODEL}\n")
    log(phase="build", s=round(time.time() - t0, 1))


def measure(side: str) -> None:
    import torch
    dev = torch.device("cuda")
    if side == "ours":
        use_checkout_plugins("qwen_interp_qwen3", "qwen_interp_transformerlens",
                             "qwen_interp_circuit_tracer")
        ref = "bluelight-qwen3-1.7b"
    else:
        import transformer_lens.supported_models as sm
        if MODEL not in sm.OFFICIAL_MODEL_NAMES:
            sm.OFFICIAL_MODEL_NAMES.append(MODEL)
        ref = RELEASE
    from circuit_tracer import ReplacementModel, attribute
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    rm = ReplacementModel.from_pretrained(MODEL, ref, device=dev, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    load_s = time.time() - t0
    load_gpu = torch.cuda.max_memory_allocated() / 1e9
    ids = rm.ensure_tokenized(PROMPT)
    _, acts = rm.get_activations(ids[None], sparse=True)
    l0 = acts._nnz() / (L * (len(ids) - 1))
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    g = attribute(PROMPT, rm, batch_size=256, max_feature_nodes=8192)
    torch.cuda.synchronize()
    log(side=side, load_s=round(load_s, 2), load_gpu_peak_gb=round(load_gpu, 2),
        l0_per_layer_token=round(l0, 1), attribute_s=round(time.time() - t0, 2),
        attribute_gpu_peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2),
        host_peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        n_tokens=len(ids), active_features=int(g.active_features.shape[0]),
        nodes=int(g.adjacency_matrix.shape[0]),
        adjacency_abs_sum=float(g.adjacency_matrix.abs().sum()))


def main() -> None:
    if sys.argv[1:2] == ["measure"]:
        measure(sys.argv[2])
        return
    build()
    for side in ("upstream", "ours"):
        subprocess.run([sys.executable, __file__, "measure", side], check=True)


if __name__ == "__main__":
    main()
