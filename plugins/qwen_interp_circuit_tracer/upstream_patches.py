"""circuit-tracer: what this plugin does, as source changes (upstream patches, registered through
``register_upstream_patches``; see ``patches/README.md``). The nnsight entries come from the same
hook-name map the plugin uses at run time; the CLT patches (top-k, native formats, first
position) are in ``upstream_patches_clt.py``, bounded attribution memory in
``upstream_patches_attribution.py``."""

from __future__ import annotations

from pathlib import Path

from qwen_interp.upstream_patches import Patch, UpstreamLayoutChanged, UpstreamProject

from .upstream_patches_attribution import PATCH as BOUNDED_ATTRIBUTION
from .upstream_patches_clt import add_bluelight_native, add_first_position, add_topk_activation

MAPPING = "circuit_tracer/utils/tl_nnsight_mapping.py"


def add_nnsight_feature_hooks(root: Path, registry) -> dict[str, str]:
    from .adapter import nnsight_feature_hooks
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
        indent = body[:len(body) - len(body.lstrip(" "))]  # the first entry's (wheel vs head)
        entries = "".join(f'{indent}"{k}": ("{loc}", "{port}"),\n'
                          for k, (loc, port) in missing.items())
        text = text[:body_start] + entries + text[body_start:]
    return {MAPPING: text} if text != (root / MAPPING).read_text() else {}


FRONTEND_UTILS = "circuit_tracer/frontend/utils.py"
RELATIVE_ASSERT = ('    assert os.path.exists(os.path.dirname(path)), '
                   'f"Could not find {os.path.dirname(path)}"\n')


def fix_relative_graph_dir(root: Path, registry) -> dict[str, str]:
    """``add_graph_metadata`` asserts that ``dirname(path)`` exists, which is ``""`` for a
    relative folder such as ``graph_files``: resolve the path first."""
    text = (root / FRONTEND_UTILS).read_text()
    if "os.path.abspath(path)" in text:
        return {}  # already upstream
    if RELATIVE_ASSERT not in text:
        raise UpstreamLayoutChanged(f"{FRONTEND_UTILS}: add_graph_metadata's check has changed")
    fixed = ("    path = os.path.abspath(path)  # dirname() of a relative folder name is \"\"\n"
             + RELATIVE_ASSERT)
    return {FRONTEND_UTILS: text.replace(RELATIVE_ASSERT, fixed, 1)}


PROJECT = UpstreamProject(
    distribution="circuit-tracer",
    package="circuit_tracer",
    pinned="0.5.0",
    repository="decoderesearch/circuit-tracer",
    patches=(
        Patch("nnsight-qwen3-feature-hooks",
              "nnsight backend: resid_mid and mlp_out hooks for Qwen3",
              "The Qwen3 mapping of the nnsight backend resolves only `mlp.hook_in` / "
              "`mlp.hook_out`, so a transcoder trained on `hook_resid_mid` / `hook_mlp_out` (the "
              "TransformerLens names most transcoders use) works on the TransformerLens backend "
              "but not on nnsight. This adds them: `hook_resid_mid` is the input of "
              "`post_attention_layernorm`, `hook_mlp_out` the output of `mlp` (the values agree "
              "with TransformerLens to 1e-4, tested in qwen-interp).",
              add_nnsight_feature_hooks),
        Patch("topk-activation", "Top-k cross-layer transcoders",
              "Adds `TopKCrossLayerTranscoder` (`circuit_tracer/transcoder/"
              "topk_cross_layer_transcoder.py`): `topk` keeps the k largest of relu(pre) per layer "
              "and position, `topk_all` the k largest per layer over all positions and features of "
              "the prompt, as BluelightAI's reference loader (`BlueLightAI/inference-clt`) "
              "computes it. Given the active set a top-k feature is linear in its pre-activation "
              "like a JumpReLU one, so attribution is exact, and `get_activations` / "
              "`feature_intervention` select the same features as `attribute()`. "
              "A hub CLT whose `config.yaml` says `activation: topk` (or `topk_all`) and `k` loads "
              "through `load_transcoder_from_hub`. The module is qwen-interp's plugin module, "
              "verbatim.",
              add_topk_activation,
              refs=("#94 (merged): top-k per-layer transcoders, selected by `activation: topk` "
                    "in `config.yaml`, \"adding CLTs shouldn't be too hard\": this is the CLT "
                    "side, with the same config field", "#55 (closed): the first top-k PR")),
        Patch("bluelight-native-clt", "Load BluelightAI's native CLT checkpoints",
              "BluelightAI trains its Qwen3 CLTs with its own code, whose checkpoints are "
              "`model_config.json` (v1 or v2) plus `clt.safetensors` (`single_file`) or "
              "`manifest.json` plus one file per layer (`layer_weights`), with `input_layer` or "
              "`output_layer` decoders, per-layer norm factors, ReLU/JumpReLU/top-k and optional "
              "`layer_indices`. `load_transcoder_from_hub` (so `ReplacementModel.from_pretrained`) "
              "now loads such a repository: when it has `model_config.json` and no `config.yaml`, "
              "the checkpoint is validated from its safetensors headers (shapes, dtypes, fit to "
              "the base model, finite thresholds), converted once into circuit-tracer's layout "
              "under `get_cache_dir()/.bluelight-native` (norm factors folded into the weights, "
              "atomic rename) and loaded with the lazy decoder. The new package "
              "`circuit_tracer/transcoder/bluelight/` is qwen-interp's plugin modules verbatim "
              "plus a small loader. Needs the top-k patch.",
              add_bluelight_native),
        Patch("first-position-for-strings", "Same first position for string inputs in every API",
              "`attribute()` tokenizes a string with `ensure_tokenized`, which prepends a special "
              "token when the model has no BOS (Qwen: `<|endoftext|>`); `get_activations`, "
              "`feature_intervention` and `feature_intervention_generate` tokenized strings "
              "without it, so for such models their position 0 was the first real token (whose "
              "features are zeroed) and positions did not match the graph's. They now tokenize "
              "strings with `ensure_tokenized` too, on both backends. Token inputs are "
              "unchanged; `feature_intervention_generate` still returns a string for a string; "
              "nnsight's intervention no longer re-tokenizes token inputs to count positions.",
              add_first_position,
              refs=("#79 (open PR, transformers v5): also routes the nnsight backend's trace "
                    "inputs through `ensure_tokenized`; the two touch the same methods",)),
        Patch("graph-files-relative-dir", "Graph files into a relative folder",
              "`create_graph_files(graph, slug, output_path=\"graph_files\")` (and "
              "`circuit-tracer attribute --graph_file_dir graph_files`) wrote the graph JSON and "
              "then failed in `add_graph_metadata` with `AssertionError: Could not find `: the "
              "check is `os.path.exists(os.path.dirname(path))`, and the dirname of a relative "
              "folder name is the empty string. The viewer's `graph-metadata.json` was never "
              "written. The path is now made absolute before the check.",
              fix_relative_graph_dir),
        # Last: it rewrites methods the others leave alone.
        BOUNDED_ATTRIBUTION,
    ),
)
