"""Part ``no-silent-truncation``: a string longer than n_ctx is an error, not silently cut.

``HookedTransformer.to_tokens`` (so ``model(str)``, ``run_with_cache(str)``, ``generate(str)``)
cuts a string to n_ctx tokens by default (``truncate=True``) and says nothing: the model then
describes another prompt. For models of a ``HOOKED_TRANSFORMER`` family a too-long string raises
instead, naming its length and how to raise n_ctx; ``truncate=True`` passed explicitly still cuts.
"""

from __future__ import annotations

import functools
from typing import Any

from qwen_interp.patching import PatchSet

from .loading import hooked_architectures


def refuse_silent_truncation(patches: PatchSet, registry: Any) -> str:
    from transformer_lens import HookedTransformer

    archs = hooked_architectures(registry)
    default = object()

    def make(original):
        @functools.wraps(original)
        def to_tokens(model, input, *args, truncate=default, **kwargs):
            arch = getattr(model.cfg, "original_architecture", None)
            explicit = truncate is not default or len(args) >= 4  # truncate given by the caller
            if explicit or arch not in archs:
                extra = {} if truncate is default else {"truncate": truncate}
                return original(model, input, *args, **extra, **kwargs)
            tokens = original(model, input, *args, truncate=False, **kwargs)
            from qwen_interp.inputs import check_length
            check_length(tokens.shape[-1], model.cfg.n_ctx, "the string input",
                         "; to_tokens(..., truncate=True) cuts it to n_ctx on purpose")
            return tokens
        return to_tokens

    patches.wrap(HookedTransformer, "to_tokens", make)
    return "string inputs longer than n_ctx: an error, not a silent cut"
