"""TransformerLens: what this plugin does at run time, as source changes (upstream patches,
registered through ``register_upstream_patches``; see ``patches/README.md``)."""

from __future__ import annotations

from pathlib import Path

from qwen_interp.upstream_patches import (Patch, UpstreamLayoutChanged, UpstreamProject,
                                          insert_sorted)

from . import upstream_patches_moe

SUPPORTED = "transformer_lens/supported_models.py"
LOADING = "transformer_lens/loading_from_pretrained.py"


# Architectures TransformerLens's own loader converts: their names are added upstream as list
# entries. Qwen3-MoE's names come with its config branch and weight conversion (add_qwen3_moe).
UPSTREAM_ARCHITECTURES = {"Qwen3ForCausalLM"}


def _missing_specs(root: Path, registry, architectures):
    text = (root / SUPPORTED).read_text()
    return [s for s in registry.models.values()
            if s.architecture in architectures and f'"{s.repo_id}"' not in text]


def add_qwen3_base_names(root: Path, registry) -> dict[str, str]:
    return add_names(root, registry, UPSTREAM_ARCHITECTURES)


def add_names(root: Path, registry, architectures) -> dict[str, str]:
    """The registered checkpoints of ``architectures`` missing from ``supported_models.py``,
    each inserted where upstream's alphabetical-order tests expect it
    (``tests/unit/test_supported_models.py``: sorted with ``key=str.casefold``)."""
    specs = _missing_specs(root, registry, architectures)
    if not specs:
        return {}
    text = (root / SUPPORTED).read_text()
    names = {s.repo_id: f'    "{s.repo_id}",\n' for s in specs}
    aliases = {s.repo_id: f'    "{s.repo_id}": {list(s.aliases)!r},\n'.replace("'", '"')
               for s in specs if s.aliases}
    text = insert_sorted(text, NAMES_OPENER, names, _entry_key, SUPPORTED)
    text = insert_sorted(text, ALIASES_OPENER, aliases, _entry_key, SUPPORTED)
    return {SUPPORTED: text}


NAMES_OPENER = "OFFICIAL_MODEL_NAMES: list[str] = [\n"
ALIASES_OPENER = "MODEL_ALIASES: dict[str, list[str]] = {\n"


def _entry_key(line: str) -> str | None:
    """The name a list entry or dict key line starts with (``    "name",`` or ``    "name": ...``);
    None for continuation lines of multi-line entries and comments."""
    if not line.startswith('    "'):
        return None
    return line[5:line.index('"', 5)]


def accept_local_checkpoint_dirs(root: Path, registry) -> dict[str, str]:
    text = (root / LOADING).read_text()
    start = text.find("def get_official_model_name(")
    body = text[start:text.find("\ndef ", start + 1)]
    if start >= 0 and ("Path(model_name)" in body or "os.path.isdir(model_name)" in body):
        return {}  # already upstream: the name check lets paths through
    anchor = ('    model_alias_map = make_model_alias_map()\n'
              '    official_model_name = model_alias_map.get(')
    if anchor not in text:
        raise UpstreamLayoutChanged(f"{LOADING}: get_official_model_name body not found")
    check = ('    if (Path(model_name) / "config.json").is_file():\n'
             '        # A local checkpoint directory: convert_hf_model_config and\n'
             '        # get_pretrained_state_dict already load from a path.\n'
             '        return model_name\n')
    return {LOADING: text.replace(anchor, check + anchor, 1)}


def add_qwen3_moe(root: Path, registry) -> dict[str, str]:
    # Loader support first (unless upstream already converts the architecture); the names last:
    # they would be refused without it.
    arch = upstream_patches_moe.ARCHITECTURE
    supported = f'architecture == "{arch}"' in (root / LOADING).read_text()
    return {**({} if supported else upstream_patches_moe.edits(root)),
            **add_names(root, registry, {arch})}


PROJECT = UpstreamProject(
    distribution="transformer-lens",
    package="transformer_lens",
    pinned="3.2.1",
    repository="TransformerLensOrg/TransformerLens",
    patches=(
        Patch("qwen3-base-names", "Add the Qwen3 Base checkpoints to the supported models",
              "`HookedTransformer.from_pretrained` accepts only names in `OFFICIAL_MODEL_NAMES`; "
              "of the Qwen3 Base checkpoints only `Qwen/Qwen3-0.6B-Base` is listed. The others "
              "share `Qwen3ForCausalLM` with the listed instruct models, so the existing config "
              "branch and `convert_qwen3_weights` serve them unchanged (logits match HF "
              "transformers to 1e-4 in fp32, tested in qwen-interp on small checkpoints with "
              "each model's real flags: GQA ratio, head_dim vs width, tied/untied embeddings). "
              "The names go where `tests/unit/test_supported_models.py` expects them "
              "(alphabetical under `str.casefold`).",
              add_qwen3_base_names,
              refs=("#1075 (open PR): adds `Qwen/Qwen3-0.6B-Base` and its alias to the same "
                    "two lists, the same way; this adds the other Qwen3 Base checkpoints",
                    "#915: the Qwen3 support request")),
        Patch("local-checkpoint-dirs", "Load a HookedTransformer from a local checkpoint directory",
              "`from_pretrained('/path/to/checkpoint')` fails in `get_official_model_name` "
              "although the config and state-dict loaders already handle a path "
              "(`HookedEncoderDecoder` already skips the name check for paths). Accept a "
              "directory holding a `config.json`.",
              accept_local_checkpoint_dirs,
              refs=("#664 (closed) and #1039 (open): `from_pretrained(<local path>)` fails in "
                    "`get_official_model_name`; #800 points users to `TransformerBridge`, but "
                    "circuit-tracer and SAELens build on `HookedTransformer`",)),
        Patch("qwen3-moe", "Qwen3-MoE (Qwen3MoeForCausalLM) in HookedTransformer",
              "`Qwen3MoeForCausalLM` (`Qwen/Qwen3-30B-A3B-Base`) has no HookedTransformer path. "
              "This adds: the config branch (the Qwen3 attention fields plus `num_experts`, "
              "`experts_per_token`, `norm_topk_prob`; configs with dense MLP layers are refused "
              "rather than computed wrongly); a `Qwen3MoE` block in `components/mlps/moe.py`, "
              "built by `MLPFactory` for this architecture; `convert_qwen3_moe_weights`; the "
              "checkpoint name and alias. Routing is HF's `Qwen3MoeSparseMoeBlock`: softmax over "
              "all router logits in fp32, top-k, renormalised iff `norm_topk_prob`. A new block "
              "rather than `MoE` because `MoE` hooks `hook_expert_weights` on the full softmax "
              "before top-k, has no router-logit or per-expert output hook, and builds experts in "
              "fp32 whatever `cfg.dtype` (2x memory for a bf16 30B model); `Qwen3MoE` keeps "
              "`MoE`'s parameter names and adds `hook_router_logits`, `hook_expert_indices`, "
              "`hook_expert_weights` (after top-k) and each expert's `hook_out`. "
              "`load_and_process_state_dict` skipped `fold_ln` for every MoE model although "
              "`get_pretrained_model_config` had already made the norms weightless, so "
              "`from_pretrained` dropped the RMSNorm gains; for Qwen3-MoE the fold now runs "
              "(`ProcessWeights.fold_layer_norm` already folds ln2 into router and experts). "
              "Both `from_pretrained` and `from_pretrained_no_processing` match HF transformers "
              "to 1e-4 in fp32 (tested in qwen-interp on a small checkpoint with the real flags: "
              "norm_topk_prob, every layer sparse, untied, 8:1 GQA).",
              add_qwen3_moe),
    ),
)
