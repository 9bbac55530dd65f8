"""Built-in plugin: model families in TransformerLens's ``HookedTransformer``.

An adapter of parts (:class:`qwen_interp.adapters.AdapterBase`); each acts on the registered model
families that declare its capability (:mod:`.families`) and stands down where upstream already
does the job. In TransformerLens 3.x:

- ``model-names``: registered checkpoints missing from ``OFFICIAL_MODEL_NAMES`` (for Qwen3: all
  Base models but 0.6B), with their aliases (:mod:`.names`);
- ``local-dirs``: ``from_pretrained("/path/to/Qwen3-1.7B-Base")`` (:mod:`.loading`);
- ``moe``: ``Qwen3MoeForCausalLM`` (Qwen3-30B-A3B), which has no HookedTransformer path
  upstream: config, MoE block with router/expert hooks, weight conversion (:mod:`.moe`);
- ``n-ctx``: the config branches hard-code 2048; ``QWEN_INTERP_N_CTX`` sets the default, up to
  the checkpoint's ``max_position_embeddings`` (:mod:`.loading`);
- ``no-silent-truncation``: a string longer than n_ctx is an error, not silently cut to n_ctx
  tokens as upstream does (:mod:`.truncation`);
- ``fast-load`` and ``fast-forward``: loading from safetensors at the size of the model, and a
  faster forward with the same hooks (:mod:`.fast_load`, :mod:`.fast_forward`).

A part no registered family asks for is inactive, and so is every part on TransformerLens 4.x,
which has no ``HookedTransformer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qwen_interp import hookimpl
from qwen_interp.adapters import AdapterBase, NothingToChange, Part
from qwen_interp.compat import KnownBad, known_bad_check
from qwen_interp.patching import PatchSet
from qwen_interp.specs import HOOKED_TRANSFORMER

from . import fast_forward, fast_load, loading, moe, names, truncation
from .families import architectures, local_checkpoint_architecture, model_families
from .loading import DEFAULT_N_CTX, ENV_N_CTX, default_n_ctx
from .names import sorted_position

__all__ = ["DEFAULT_N_CTX", "ENV_N_CTX", "TransformerLensAdapter", "architectures",
           "default_n_ctx", "hooked_transformer_architectures", "local_checkpoint_architecture",
           "model_families", "sorted_position"]

LOADING = "transformer_lens.loading_from_pretrained"
NO_HOOKED_TRANSFORMER = ("TransformerLens has no HookedTransformer (4.x): nothing patched; "
                         "install transformer-lens 3.2.x")


def hooked_transformer_architectures(registry: Any) -> frozenset[str]:
    """The architectures whose family loads in ``HookedTransformer`` (``HOOKED_TRANSFORMER``)."""
    return architectures(registry, HOOKED_TRANSFORMER)


def _on_hooked_transformer(apply: Callable[[PatchSet, Any], str]) -> Callable[[PatchSet, Any], str]:
    """``apply``, standing down on a TransformerLens without ``HookedTransformer``."""
    def run(patches: PatchSet, registry: Any) -> str:
        import transformer_lens
        if not hasattr(transformer_lens, "HookedTransformer"):
            raise NothingToChange(NO_HOOKED_TRANSFORMER)
        return apply(patches, registry)
    return run


class TransformerLensAdapter(AdapterBase):
    name = "transformerlens"
    module = "transformer_lens"

    def parts(self) -> list[Part]:
        # All wait for the whole package (its __init__ imports every module they change), in the
        # order they wrap: ``n-ctx`` wraps ``moe``'s convert_hf_model_config.
        specs = [
            ("model-names", ("OFFICIAL_MODEL_NAMES, MODEL_ALIASES, DEFAULT_MODEL_ALIASES of "
                             "transformer_lens.supported_models (in place)"), names.apply),
            ("local-dirs", f"{LOADING}.get_official_model_name", loading.accept_local_dirs),
            ("moe", (f"{LOADING}.convert_hf_model_config and get_pretrained_state_dict, "
                     "transformer_block.MLPFactory, HookedTransformer.load_and_process_state_dict"),
             moe.apply),
            ("n-ctx", f"{LOADING}.convert_hf_model_config", loading.configurable_n_ctx),
            ("no-silent-truncation", "HookedTransformer.to_tokens",
             truncation.refuse_silent_truncation),
            ("fast-load", "HookedTransformer.from_pretrained", fast_load.apply),
            ("fast-forward", "forward of TransformerBlock, AbstractAttention, GatedMLP, Unembed",
             fast_forward.apply),
        ]
        return [Part(name, self.module, changes, _on_hooked_transformer(apply))
                for name, changes, apply in specs]


_ADAPTER = TransformerLensAdapter()


@hookimpl
def register_adapters(register):
    register(_ADAPTER)


@hookimpl
def register_upstream_patches(register):
    # The same changes as upstream-ready source patches (`qwen-interp patches`).
    from .upstream_patches import PROJECT
    register(PROJECT)


# Known-bad TransformerLens releases, reported by `qwen-interp doctor`.
KNOWN_BAD = (
    KnownBad("transformer-lens", ">=4.0", "4.x removed HookedTransformer, which circuit-tracer "
             "and SAELens subclass; use 3.2.1"),
    KnownBad("transformer-lens", ">=3.3,<4.0", "needs transformers >= 5.4, which circuit-tracer "
             "0.5 forbids", only_with="circuit-tracer"),
)


@hookimpl
def register_doctor_checks(register):
    register(known_bad_check("transformerlens-versions", KNOWN_BAD))
