"""circuit-tracer: what the ``circuit_tracer`` plugin does for its nnsight backend, as a source
change. The entries come from the same hook-name map the plugin uses at run time."""

from __future__ import annotations

from pathlib import Path

from . import Patch, Project, UpstreamLayoutChanged

MAPPING = "circuit_tracer/utils/tl_nnsight_mapping.py"


def add_nnsight_feature_hooks(root: Path, registry) -> dict[str, str]:
    from qwen_interp_circuit_tracer.adapter import nnsight_feature_hooks
    text = (root / MAPPING).read_text()
    for arch, hook_map in registry.hook_name_maps.items():
        block_start = text.find(f'model_architecture="{arch}"')
        if block_start < 0:
            continue  # circuit-tracer has no mapping for this architecture at all
        anchor = text.find("feature_hook_mapping={\n", block_start)
        block_end = text.find("_register(", block_start)
        if anchor < 0 or (0 <= block_end < anchor):
            raise UpstreamLayoutChanged(f"{MAPPING}: no feature_hook_mapping for {arch}")
        body_start = anchor + len("feature_hook_mapping={\n")
        body = text[body_start:text.find("},", body_start)]
        missing = {k: v for k, v in nnsight_feature_hooks(hook_map).items() if f'"{k}"' not in body}
        entries = "".join(f'            "{k}": ("{loc}", "{port}"),\n'
                          for k, (loc, port) in missing.items())
        text = text[:body_start] + entries + text[body_start:]
    return {MAPPING: text}


PROJECT = Project(
    distribution="circuit-tracer",
    package="circuit_tracer",
    pinned="0.5.0",
    patches=(
        Patch("nnsight-qwen3-feature-hooks", "nnsight backend: resid_mid and mlp_out hooks for Qwen3",
              "The Qwen3 mapping of the nnsight backend resolves only `mlp.hook_in` / "
              "`mlp.hook_out`, so a transcoder trained on `hook_resid_mid` / `hook_mlp_out` (the "
              "TransformerLens names most transcoders use) works on the TransformerLens backend "
              "but not on nnsight. This adds them: `hook_resid_mid` is the input of "
              "`post_attention_layernorm`, `hook_mlp_out` the output of `mlp` (the values agree "
              "with TransformerLens to 1e-4, tested in qwen-interp).",
              add_nnsight_feature_hooks),
    ),
)
