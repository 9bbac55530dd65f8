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
    n_ctx = int(raw)
    if not 0 < n_ctx <= max_position_embeddings:
        raise ValueError(f"{ENV_N_CTX}={raw}: must be between 1 and the checkpoint's "
                         f"max_position_embeddings ({max_position_embeddings})")
    return n_ctx


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
                self._patches.append(sm.OFFICIAL_MODEL_NAMES, spec.repo_id)
                added.append(spec.repo_id)
            new_aliases = [a for a in spec.aliases if a.lower() not in known_aliases]
            if new_aliases:
                merged = [*sm.MODEL_ALIASES.get(spec.repo_id, []), *new_aliases]
                self._patches.setitem(sm.MODEL_ALIASES, spec.repo_id, merged)
            if spec.repo_id in added:
                default = sm.MODEL_ALIASES.get(spec.repo_id, [spec.repo_id])[0]
                self._patches.append(sm.DEFAULT_MODEL_ALIASES, default)
        if added:
            self.report.append(f"added model names: {', '.join(added)}")
        if upstream:
            self.report.append(f"already upstream (stood down): {', '.join(upstream)}")

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
