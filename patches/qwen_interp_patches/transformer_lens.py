"""TransformerLens: what the ``transformerlens`` plugin does at run time, as source changes."""

from __future__ import annotations

from pathlib import Path

from . import Patch, Project, UpstreamLayoutChanged, insert_after_last

SUPPORTED = "transformer_lens/supported_models.py"
LOADING = "transformer_lens/loading_from_pretrained.py"


# Architectures TransformerLens's own loader converts: only their names can be added upstream
# as a list entry (Qwen3-MoE needs a config branch and a weight conversion first).
UPSTREAM_ARCHITECTURES = {"Qwen3ForCausalLM"}


def _missing_specs(root: Path, registry):
    text = (root / SUPPORTED).read_text()
    return [s for s in registry.models.values()
            if s.architecture in UPSTREAM_ARCHITECTURES and f'"{s.repo_id}"' not in text]


def add_qwen3_base_names(root: Path, registry) -> dict[str, str]:
    specs = _missing_specs(root, registry)
    if not specs:
        return {}
    text = (root / SUPPORTED).read_text()
    head, sep, tail = text.partition("MODEL_ALIASES: dict[str, list[str]] = {")
    if not sep:
        raise UpstreamLayoutChanged(f"{SUPPORTED}: MODEL_ALIASES not found")
    names = "".join(f'    "{s.repo_id}",\n' for s in specs)
    aliases = "".join(f'    "{s.repo_id}": {list(s.aliases)!r},\n'.replace("'", '"')
                      for s in specs if s.aliases)
    head = insert_after_last(head, '"Qwen/Qwen3-', names, SUPPORTED)
    tail = insert_after_last(tail, '"Qwen/Qwen3-', aliases, SUPPORTED)
    return {SUPPORTED: head + sep + tail}


def accept_local_checkpoint_dirs(root: Path, registry) -> dict[str, str]:
    text = (root / LOADING).read_text()
    anchor = '    model_alias_map = make_model_alias_map()\n    official_model_name = model_alias_map.get('
    if anchor not in text:
        raise UpstreamLayoutChanged(f"{LOADING}: get_official_model_name body not found")
    check = ('    if (Path(model_name) / "config.json").is_file():\n'
             '        # A local checkpoint directory: convert_hf_model_config and\n'
             '        # get_pretrained_state_dict already load from a path.\n'
             '        return model_name\n')
    return {LOADING: text.replace(anchor, check + anchor, 1)}


PROJECT = Project(
    distribution="transformer-lens",
    package="transformer_lens",
    pinned="3.2.1",
    patches=(
        Patch("qwen3-base-names", "Add the Qwen3 Base checkpoints to the supported models",
              "`HookedTransformer.from_pretrained` accepts only names in `OFFICIAL_MODEL_NAMES`; "
              "of the Qwen3 Base checkpoints only `Qwen/Qwen3-0.6B-Base` is listed. The others "
              "share `Qwen3ForCausalLM` with the listed instruct models, so the existing config "
              "branch and `convert_qwen3_weights` serve them unchanged (logits match HF "
              "transformers to 1e-4 in fp32, tested in qwen-interp on small checkpoints with "
              "each model's real flags: GQA ratio, head_dim vs width, tied/untied embeddings).",
              add_qwen3_base_names),
        Patch("local-checkpoint-dirs", "Load a HookedTransformer from a local checkpoint directory",
              "`from_pretrained('/path/to/checkpoint')` fails in `get_official_model_name` "
              "although the config and state-dict loaders already handle a path "
              "(`HookedEncoderDecoder` already skips the name check for paths). Accept a "
              "directory holding a `config.json`.",
              accept_local_checkpoint_dirs),
    ),
)
