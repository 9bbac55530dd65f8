"""Qwen-Scope SAEs for the offline Hub: ``layer{n}.sae.pt`` files exactly as the Qwen team
publishes them (a plain dict of four fp32 tensors, Qwen-Scope orientation), under the real repo
ids or under small test releases that fit the small offline models.

Also a Qwen3 checkpoint at a model's real width (d_model, heads, MLP, vocabulary) with only a few
layers, for tests at a release's real d_model and width.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from pathlib import Path

from qwen_interp.hookspecs import hookimpl
from qwen_interp.specs import ModelSpec, SAERelease
from .hub import OfflineHub, randomize_, small_config, write_tokenizer


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def qwen_scope_tensors(d_model: int, d_sae: int, seed: int, tied: bool = False) -> dict:
    """Random Qwen-Scope weights: W_enc (d_sae, d_model), W_dec (d_model, d_sae), fp32.

    ``tied``: unit-norm decoder columns and ``W_enc = W_dec.T``, so re-encoding
    ``h + s * W_dec[:, f]`` raises feature f's pre-activation by exactly ``s`` (handy for steering
    tests)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_model, d_sae, generator=g)
    W_dec /= W_dec.norm(dim=0, keepdim=True)
    if tied:
        W_enc = W_dec.T.contiguous()
    else:
        W_enc = torch.randn(d_sae, d_model, generator=g) / d_model ** 0.5
    return {"W_enc": W_enc, "W_dec": W_dec,
            "b_enc": 0.01 * torch.randn(d_sae, generator=g),
            "b_dec": 0.1 * torch.randn(d_model, generator=g)}


def write_qwen_scope_layer(path: str | Path, tensors: dict) -> Path:
    import torch
    path = Path(path)
    torch.save(dict(tensors), path)
    return path


def qwen_scope_snapshot(hub: OfflineHub, release: SAERelease, layers: Iterable[int],
                        d_model: int | None = None, d_sae: int | None = None,
                        tied: bool = False) -> Path:
    """The Hub snapshot of ``release.repo_id`` with ``layer{n}.sae.pt`` for ``layers`` (built
    once per cache: the layer set of the first call stays). Shapes default to the release's."""
    layers = list(layers)

    def write(folder: Path) -> None:
        for n in layers:
            tensors = qwen_scope_tensors(d_model or release.d_model, d_sae or release.d_sae,
                                         _seed(f"{release.repo_id}/{n}"), tied=tied)
            write_qwen_scope_layer(folder / release.file_template.format(layer=n), tensors)

    return hub.snapshot(release.repo_id, write)


def tiny_release(spec: ModelSpec, d_sae: int = 256, k: int = 8, n_layers: int = 3,
                 tied: bool = False) -> SAERelease:
    """A test release in Qwen-Scope format for the small offline stand-in of ``spec``."""
    d_model = small_config(spec, n_layers=n_layers).hidden_size
    short = spec.repo_id.split("/")[-1]
    tag = "tied-" if tied else ""
    return SAERelease(release=f"qwen-interp-test-{tag}{short.lower()}-w{d_sae}-l{k}",
                      repo_id=f"qwen-interp-test/SAE-Res-{short}-{tag}W{d_sae}-L0_{k}",
                      model_repo_id=spec.repo_id, d_model=d_model, d_sae=d_sae, k=k,
                      n_layers=n_layers)


def real_width_model(hub: OfflineHub, spec: ModelSpec, n_layers: int = 2) -> Path:
    """``spec.repo_id`` at its real width (hidden size, heads, MLP, vocabulary) with ``n_layers``
    layers, random weights, bf16 on disk, the genuine tokenizer. Use a separate ``HF_HOME``
    from the small models: the snapshot takes the repo id."""
    def write(folder: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, Qwen3Config
        from transformers.modeling_utils import no_init_weights
        config = Qwen3Config(
            vocab_size=spec.vocab_size, hidden_size=spec.d_model, intermediate_size=spec.d_mlp,
            num_hidden_layers=n_layers, num_attention_heads=spec.n_heads,
            num_key_value_heads=spec.n_kv_heads, head_dim=spec.d_head,
            max_position_embeddings=spec.max_position_embeddings,
            tie_word_embeddings=spec.tied_embeddings, rope_theta=spec.rope_theta,
            rms_norm_eps=spec.rms_norm_eps, torch_dtype="bfloat16", bos_token_id=151643,
            eos_token_id=151643, architectures=[spec.architecture])
        with no_init_weights():  # randomize_ sets every weight; skip HF's own init (slow)
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        randomize_(model, _seed(spec.repo_id))
        model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
        write_tokenizer(folder)
        (folder / "qwen_interp_test.json").write_text(json.dumps({"real_width_layers": n_layers}))

    return hub.snapshot(spec.repo_id, write)


class SAEReleasePlugin:
    """A qwen-interp plugin that registers the given SAE releases, for tests::

        plugin = SAEReleasePlugin([tiny_release(spec)])
        qwen_interp.register_plugin(plugin)     # SAELens now knows the release by name
        ...
        qwen_interp.unregister_plugin(plugin)
    """

    def __init__(self, releases: Iterable[SAERelease]) -> None:
        self.releases = tuple(releases)

    @hookimpl
    def register_sae_releases(self, register) -> None:
        for release in self.releases:
            register(release)
