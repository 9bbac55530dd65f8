"""Built-in plugin: Qwen3.5 models (Qwen-Scope's 2B, 9B, 27B and 35B-A3B backbones).

Registers their specs, hook maps and model families in every profile (SAE release checks use
them); loading needs transformers >= 5.2, so it works only in the ``qwen35`` install profile. In
the main profile (transformers 4.57, pinned by circuit-tracer) :func:`load_model` raises with the
profile's name, and ``qwen-interp doctor`` says so; importing never fails.
"""

from __future__ import annotations

from qwen_interp import hookimpl

from .adapter import MIN_TRANSFORMERS, PROFILE_HINT, Qwen35Adapter, qwen35_supported
from .model import load_model, sae_features
from .specs import (EXTRA, PUBLISHED_ARCHITECTURE, QWEN35, QWEN35_FAMILY, QWEN35_HOOKS,
                    QWEN35_MODELS, QWEN35_MOE, QWEN35_MOE_FAMILY, QWEN35_MOE_HOOKS, Qwen35Extra,
                    small_text_kwargs)

__all__ = ["EXTRA", "MIN_TRANSFORMERS", "PROFILE_HINT", "PUBLISHED_ARCHITECTURE", "QWEN35",
           "QWEN35_FAMILY", "QWEN35_HOOKS", "QWEN35_MODELS", "QWEN35_MOE", "QWEN35_MOE_FAMILY",
           "QWEN35_MOE_HOOKS", "Qwen35Adapter", "Qwen35Extra", "load_model", "qwen35_supported",
           "sae_features", "small_text_kwargs"]

_ADAPTER = Qwen35Adapter()


@hookimpl
def register_models(register):
    for spec in QWEN35_MODELS:
        register(spec)


@hookimpl
def register_model_families(register):
    register(QWEN35_FAMILY)
    register(QWEN35_MOE_FAMILY)


@hookimpl
def register_adapters(register):
    register(_ADAPTER)
