"""SAELens: the safety half of what this plugin does for Qwen-Scope, as a source change (an
upstream patch, registered through ``register_upstream_patches``; see ``patches/README.md``). The
plugin's conversion cache stays a plugin feature."""

from __future__ import annotations

from pathlib import Path

from qwen_interp.upstream_patches import (NotApplicable, Patch, UpstreamLayoutChanged,
                                          UpstreamProject)

LOADERS = "sae_lens/loading/pretrained_sae_loaders.py"
UNSAFE = "state_dict_loaded = torch.load(sae_path, map_location=device)\n"
SAFE = ("# A .sae.pt is a plain dict of tensors: never let its pickle run code.\n"
        "    state_dict_loaded = torch.load(sae_path, map_location=device, weights_only=True)\n")


def qwen_scope_weights_only(root: Path, registry) -> dict[str, str]:
    text = (root / LOADERS).read_text()
    start = text.find("def qwen_scope_sae_huggingface_loader(")
    if start < 0:
        raise NotApplicable(f"{LOADERS} has no qwen_scope_sae_huggingface_loader (SAELens added "
                            "the Qwen-Scope loader in #677)")
    end = text.find("\ndef ", start + 1)
    body = text[start:end]
    if "weights_only=True" in body:
        return {}  # already upstream
    if UNSAFE not in body:
        raise UpstreamLayoutChanged(f"{LOADERS}: qwen_scope loader no longer reads with torch.load")
    return {LOADERS: text[:start] + body.replace(UNSAFE, SAFE, 1) + text[end:]}


PROJECT = UpstreamProject(
    distribution="sae-lens",
    package="sae_lens",
    pinned="6.54.12",
    repository="decoderesearch/SAELens",
    patches=(
        Patch("qwen-scope-weights-only",
              "Qwen-Scope loader: read checkpoints with weights_only=True",
              "`qwen_scope_sae_huggingface_loader` reads each `layer{n}.sae.pt` with a bare "
              "`torch.load`, which runs any code in the pickle on torch < 2.6 or when "
              "`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` is set. The files are plain dicts of four "
              "tensors, so `weights_only=True` loses nothing and refuses a malicious file "
              "(tested in qwen-interp: the payload never runs).",
              qwen_scope_weights_only,
              refs=("#677 (merged): added the Qwen-Scope releases and this loader",)),
    ),
)
