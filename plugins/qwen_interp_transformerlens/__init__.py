"""Built-in plugin: Qwen3 checkpoints in TransformerLens's ``HookedTransformer``.

What it bridges in TransformerLens 3.x (each part stands down when upstream already does it):
- the registered Qwen3 checkpoints missing from ``OFFICIAL_MODEL_NAMES`` (all Base models but
  0.6B), with their aliases;
- loading from a local checkpoint directory (``from_pretrained("/path/to/Qwen3-1.7B-Base")``);
- ``Qwen3MoeForCausalLM`` (Qwen3-30B-A3B), which has no HookedTransformer path upstream: config,
  MoE block with router/expert hooks, weight conversion (``moe.py``);
- ``n_ctx``: the Qwen3 config branch hard-codes 2048; ``QWEN_INTERP_N_CTX`` sets the default, up
  to the checkpoint's ``max_position_embeddings`` (TL allocates an n_ctx x n_ctx mask per layer,
  so the default stays 2048 unless asked). ``from_pretrained(..., n_ctx=N)`` works as upstream.
  A string longer than n_ctx is an error, not silently cut to n_ctx tokens as upstream does.
- speed (issue 8): fast loading from safetensors (``fast_load.py``) and a faster Qwen3 forward
  with the same hooks (``fast_forward.py``).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

from qwen_interp import hookimpl
from qwen_interp.patching import PatchSet

from . import fast_forward, fast_load, moe

# Architectures whose HookedTransformer config branch and weight conversion exist upstream
# (Qwen3ForCausalLM) or are added by moe.py (unless upstream has them).
HOOKED_TRANSFORMER_ARCHITECTURES = {"Qwen3ForCausalLM", moe.ARCHITECTURE}
ENV_N_CTX = "QWEN_INTERP_N_CTX"
DEFAULT_N_CTX = 2048


def local_checkpoint_architecture(name: str) -> str | None:
    """The ``architectures[0]`` of a local checkpoint directory, or None if ``name`` is not one."""
    config = Path(name) / "config.json"
    if not config.is_file():
        return None
    try:
        return (json.loads(config.read_text()).get("architectures") or [None])[0]
    except (OSError, ValueError):
        return None


def default_n_ctx(max_position_embeddings: int) -> int:
    raw = os.environ.get(ENV_N_CTX)
    if raw is None:
        return min(DEFAULT_N_CTX, max_position_embeddings)
    try:
        n_ctx = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_N_CTX}={raw!r}: expected a whole number of tokens, between 1 "
                         f"and the checkpoint's max_position_embeddings "
                         f"({max_position_embeddings})") from None
    if not 0 < n_ctx <= max_position_embeddings:
        raise ValueError(f"{ENV_N_CTX}={raw}: must be between 1 and the checkpoint's "
                         f"max_position_embeddings ({max_position_embeddings})")
    return n_ctx


def sorted_position(names: list[str], name: str) -> int:
    """Where ``name`` goes in a list kept in TransformerLens's order: case-insensitive
    alphabetical, as its tests/unit/test_supported_models.py requires of OFFICIAL_MODEL_NAMES
    and of MODEL_ALIASES's keys."""
    folded = name.casefold()
    return next((i for i, n in enumerate(names) if n.casefold() > folded), len(names))


def _upstream_accepts_local_dirs(get_official_model_name) -> bool:
    """Probe: does upstream's name check already accept a local Qwen3 checkpoint directory?"""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
        try:
            get_official_model_name(d)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not supported"
            return False


class TransformerLensAdapter:
    name = "transformerlens"
    module = "transformer_lens"

    def __init__(self) -> None:
        self._patches = PatchSet()
        self.active = False
        self.report: list[str] = []

    def activate(self, registry) -> None:
        if self.active:
            return
        import transformer_lens
        import transformer_lens.loading_from_pretrained as loading
        import transformer_lens.supported_models as sm

        self.report = []
        self.active = True
        if not hasattr(transformer_lens, "HookedTransformer"):
            self.report.append("TransformerLens has no HookedTransformer (4.x): nothing patched; "
                               "install transformer-lens 3.2.x")
            return
        specs = [s for s in registry.models.values()
                 if s.architecture in HOOKED_TRANSFORMER_ARCHITECTURES]
        self._register_names(sm, loading, specs)
        if _upstream_accepts_local_dirs(loading.get_official_model_name):
            self.report.append("local checkpoint directories: upstream already accepts them")
        else:
            self._accept_local_dirs(loading)
        moe.install(self._patches, loading, {s.repo_id for s in specs
                                              if s.architecture == moe.ARCHITECTURE}, self.report)
        self._configurable_n_ctx(loading)
        self._refuse_silent_truncation(transformer_lens.HookedTransformer)
        # Issue 8: registered dense Qwen3 checkpoints load straight from safetensors into the
        # target dtype/device (fast_load.py); QWEN_INTERP_FAST_LOAD=0 selects upstream's path.
        fast_load.install(self._patches, transformer_lens.HookedTransformer,
                          {s.repo_id for s in specs if s.architecture == fast_load.ARCHITECTURE},
                          self.report)
        # Issue 8: Qwen3 forwards skip TL's redundant work (fast_forward.py) while no hook needs
        # it; QWEN_INTERP_FAST_FORWARD=0 selects upstream's forward.
        fast_forward.install(self._patches, self.report)

    def _register_names(self, sm, loading, specs) -> None:
        # loading_from_pretrained imported these very objects: mutate in place, never rebind.
        assert loading.OFFICIAL_MODEL_NAMES is sm.OFFICIAL_MODEL_NAMES
        assert loading.MODEL_ALIASES is sm.MODEL_ALIASES
        known_aliases = {a.lower() for names in sm.MODEL_ALIASES.values() for a in names}
        added, upstream = [], []
        for spec in specs:
            if spec.repo_id in sm.OFFICIAL_MODEL_NAMES:
                upstream.append(spec.repo_id)
            else:
                at = sorted_position(sm.OFFICIAL_MODEL_NAMES, spec.repo_id)
                self._insert(sm.OFFICIAL_MODEL_NAMES, at, spec.repo_id)
                added.append(spec.repo_id)
            new_aliases = [a for a in spec.aliases if a.lower() not in known_aliases]
            if new_aliases:
                merged = [*sm.MODEL_ALIASES.get(spec.repo_id, []), *new_aliases]
                self._set_sorted_key(sm.MODEL_ALIASES, spec.repo_id, merged)
            if spec.repo_id in added:  # DEFAULT_MODEL_ALIASES[i] belongs to OFFICIAL_MODEL_NAMES[i]
                default = sm.MODEL_ALIASES.get(spec.repo_id, [spec.repo_id])[0]
                self._insert(sm.DEFAULT_MODEL_ALIASES, at, default)
        if added:
            self.report.append(f"added model names: {', '.join(added)}")
        if upstream:
            self.report.append(f"already upstream (stood down): {', '.join(upstream)}")

    def _insert(self, target: list, index: int, item) -> None:
        """Insert in place at ``index``: appended through the PatchSet, whose undo removes that
        very object wherever it is, then moved into place."""
        self._patches.append(target, item)
        target.insert(index, target.pop())

    def _set_sorted_key(self, table: dict, key, value) -> None:
        """``table[key] = value``, a new key placed in sorted order in place: the keys after it
        are moved behind it (same values); undo drops it, leaving upstream's order."""
        if key in table:
            self._patches.setitem(table, key, value)
            return
        tail = list(table)[sorted_position(list(table), key):]
        self._patches.setitem(table, key, value)
        for k in tail:
            table[k] = table.pop(k)

    def _accept_local_dirs(self, loading) -> None:
        original = loading.get_official_model_name

        @functools.wraps(original)
        def get_official_model_name(model_name: str) -> str:
            if local_checkpoint_architecture(model_name) in HOOKED_TRANSFORMER_ARCHITECTURES:
                return model_name
            return original(model_name)

        self._patches.setattr(loading, "get_official_model_name", get_official_model_name)
        self.report.append("local Qwen3 checkpoint directories: accepted")

    def _configurable_n_ctx(self, loading) -> None:
        original = loading.convert_hf_model_config

        @functools.wraps(original)
        def convert_hf_model_config(model_name: str, **kwargs):
            cfg = original(model_name, **kwargs)
            if cfg.get("original_architecture") in HOOKED_TRANSFORMER_ARCHITECTURES:
                from transformers import AutoConfig
                hf = AutoConfig.from_pretrained(model_name if Path(model_name).exists()
                                                else loading.get_official_model_name(model_name),
                                                **kwargs)
                cfg["n_ctx"] = default_n_ctx(hf.max_position_embeddings)
            return cfg

        self._patches.setattr(loading, "convert_hf_model_config", convert_hf_model_config)
        self.report.append(f"Qwen3 n_ctx: default {DEFAULT_N_CTX}, set with {ENV_N_CTX} "
                           "up to max_position_embeddings")

    def _refuse_silent_truncation(self, hooked_transformer) -> None:
        """``to_tokens`` (so ``model(str)``, ``run_with_cache(str)``, ``generate(str)``) cuts a
        string to n_ctx tokens by default (``truncate=True``) and says nothing: the model then
        describes another prompt. For Qwen3 models a too-long string raises instead, naming
        its length and how to raise n_ctx; ``truncate=True`` passed explicitly still cuts."""
        original = hooked_transformer.to_tokens
        default = object()

        @functools.wraps(original)
        def to_tokens(model, input, *args, truncate=default, **kwargs):
            arch = getattr(model.cfg, "original_architecture", None)
            explicit = truncate is not default or len(args) >= 4  # truncate given by the caller
            if explicit or arch not in HOOKED_TRANSFORMER_ARCHITECTURES:
                extra = {} if truncate is default else {"truncate": truncate}
                return original(model, input, *args, **extra, **kwargs)
            tokens = original(model, input, *args, truncate=False, **kwargs)
            from qwen_interp.inputs import check_length
            check_length(tokens.shape[-1], model.cfg.n_ctx, "the string input",
                         "; to_tokens(..., truncate=True) cuts it to n_ctx on purpose")
            return tokens

        self._patches.setattr(hooked_transformer, "to_tokens", to_tokens)
        self.report.append("Qwen3 string inputs longer than n_ctx: an error, not a silent cut")

    def deactivate(self) -> None:
        self._patches.undo()
        self.active = False
        self.report = []

    def status(self) -> list[str]:
        return list(self.report) if self.active else ["not active (transformer_lens not imported)"]


_ADAPTER = TransformerLensAdapter()


@hookimpl
def register_adapters(register):
    register(_ADAPTER)
