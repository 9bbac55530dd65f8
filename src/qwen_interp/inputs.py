"""Checks of user input that would otherwise fail deep inside a tool (or, worse, be silently
changed): dtypes given as strings, prompts that cannot be tokenized, prompts longer than the
model's context. Each raises one :class:`~qwen_interp.errors.InputError` that names the value
and what was expected, before the model runs or any weight is loaded."""

from __future__ import annotations

from typing import Any

from .errors import InputError

# Accepted dtype spellings: TransformerLens's own (DTYPE_FROM_STRING) plus torch's names.
_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32",
                "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16", "half": "float16",
                "float64": "float64", "double": "float64"}

N_CTX_HINT = ("raise n_ctx with QWEN_INTERP_N_CTX=N or from_pretrained(..., n_ctx=N) (up to the "
              "checkpoint's max_position_embeddings), or shorten the prompt")


def torch_dtype(value: Any, what: str = "dtype") -> Any:
    """``value`` as a torch floating-point dtype: a torch.dtype, or a name such as "bfloat16",
    "bf16", "float32" or "torch.float16". None stays None (the tool's default)."""
    import torch
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        name = _DTYPE_NAMES.get(value.strip().lower().removeprefix("torch."))
        if name is not None:
            return getattr(torch, name)
    raise InputError(f"{what}={value!r}: expected a torch dtype or one of "
                     f"{sorted(_DTYPE_NAMES)} (also with a 'torch.' prefix)")


def check_prompt(prompt: object, what: str = "prompt") -> None:
    """Refuse prompts no tokenizer can read (bytes, lone surrogates) and empty prompts (no
    position to read features at or to attribute from)."""
    if isinstance(prompt, (bytes, bytearray)):
        raise InputError(f"{what} is {type(prompt).__name__}, expected str (or token ids): "
                         "decode it first, e.g. prompt.decode('utf-8')")
    if isinstance(prompt, str):
        if not prompt:
            raise InputError(f"{what} is the empty string: there is no token to run or "
                             "attribute (circuit-tracer would only see the special token it "
                             "prepends, whose features are zeroed)")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = prompt[exc.start]
            raise InputError(
                f"{what} has a lone surrogate {bad!r} (U+{ord(bad):04X}) at character "
                f"{exc.start}: not valid Unicode text, so it cannot be tokenized; remove it or "
                "repair the text, e.g. text.encode('utf-8', 'replace').decode('utf-8')") from None
        return
    numel = getattr(prompt, "numel", None)
    if (callable(numel) and numel() == 0) or (isinstance(prompt, (list, tuple)) and not prompt):
        raise InputError(f"{what} has no tokens: there is nothing to run or attribute")


def check_length(n_tokens: int, n_ctx: int | None, what: str = "prompt", extra: str = "") -> None:
    """Refuse a token sequence longer than the model's context (TransformerLens would cut a
    string to n_ctx tokens without a word, and fail on longer token ids)."""
    if n_ctx is not None and n_tokens > n_ctx:
        raise InputError(f"{what} is {n_tokens} tokens, longer than the model's context "
                         f"n_ctx={n_ctx}: {N_CTX_HINT}{extra}")
