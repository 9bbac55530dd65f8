"""Parts ``local-dirs`` and ``n-ctx``: two changes to ``transformer_lens.loading_from_pretrained``
for the families that declare ``HOOKED_TRANSFORMER``.

- ``local-dirs``: ``from_pretrained("/path/to/Qwen3-1.7B-Base")`` fails upstream in
  ``get_official_model_name`` although the config and state-dict loaders already read a path. A
  local checkpoint directory of such a family is let through.
- ``n-ctx``: TransformerLens's config branches hard-code ``n_ctx`` 2048. ``QWEN_INTERP_N_CTX``
  sets the default, up to the checkpoint's ``max_position_embeddings`` (TransformerLens allocates
  an n_ctx x n_ctx mask per layer, so the default stays 2048 unless asked);
  ``from_pretrained(..., n_ctx=N)`` works as upstream.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from qwen_interp import settings
from qwen_interp.adapters import AlreadyUpstream
from qwen_interp.patching import PatchSet
from qwen_interp.specs import HOOKED_TRANSFORMER

from .families import local_checkpoint_architecture, needed

ENV_N_CTX = settings.N_CTX.name
DEFAULT_N_CTX = 2048


def default_n_ctx(max_position_embeddings: int) -> int:
    n_ctx = settings.N_CTX.get()  # parsed there (a whole number >= 1); the bound is ours
    if n_ctx is None:
        return min(DEFAULT_N_CTX, max_position_embeddings)
    if n_ctx > max_position_embeddings:
        raise settings.SettingError(f"{ENV_N_CTX}={n_ctx}: must be between 1 and the checkpoint's "
                                    f"max_position_embeddings ({max_position_embeddings})")
    return n_ctx


def hooked_architectures(registry: Any) -> frozenset[str]:
    """The ``HOOKED_TRANSFORMER`` architectures (the part is inactive when there are none)."""
    return needed(registry, HOOKED_TRANSFORMER)


def upstream_accepts_local_dirs(get_official_model_name: Any, architecture: str) -> bool:
    """Probe: does upstream's name check already accept a local checkpoint directory?"""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps({"architectures": [architecture]}))
        try:
            get_official_model_name(d)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not supported"
            return False


def accept_local_dirs(patches: PatchSet, registry: Any) -> str:
    import transformer_lens.loading_from_pretrained as loading

    archs = hooked_architectures(registry)
    if upstream_accepts_local_dirs(loading.get_official_model_name, min(archs)):
        raise AlreadyUpstream("upstream already accepts local checkpoint directories")

    def make(original):
        @functools.wraps(original)
        def get_official_model_name(model_name: str) -> str:
            if local_checkpoint_architecture(model_name) in archs:
                return model_name
            return original(model_name)
        return get_official_model_name

    patches.wrap(loading, "get_official_model_name", make)
    return f"local checkpoint directories of {', '.join(sorted(archs))}: accepted"


def configurable_n_ctx(patches: PatchSet, registry: Any) -> str:
    import transformer_lens.loading_from_pretrained as loading

    archs = hooked_architectures(registry)

    def make(original):
        @functools.wraps(original)
        def convert_hf_model_config(model_name: str, **kwargs):
            cfg = original(model_name, **kwargs)
            if cfg.get("original_architecture") in archs:
                from transformers import AutoConfig
                hf = AutoConfig.from_pretrained(model_name if Path(model_name).exists()
                                                else loading.get_official_model_name(model_name),
                                                **kwargs)
                cfg["n_ctx"] = default_n_ctx(hf.max_position_embeddings)
            return cfg
        return convert_hf_model_config

    patches.wrap(loading, "convert_hf_model_config", make)
    return f"default {DEFAULT_N_CTX}, set with {ENV_N_CTX} up to max_position_embeddings"
