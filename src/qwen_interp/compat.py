"""What the pinned stack is, and known-bad versions of it (shown by ``qwen-interp doctor``)."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from packaging.version import Version

STACK = ("torch", "transformers", "huggingface-hub", "tokenizers", "transformer-lens",
         "circuit-tracer", "nnsight", "sae-lens", "pluggy", "safetensors")


@dataclass(frozen=True)
class KnownBad:
    package: str
    bad: str  # a specifier, e.g. ">=4.0"
    why: str
    only_with: str | None = None  # the rule holds only when this package is installed


KNOWN_BAD = (
    KnownBad("transformer-lens", ">=4.0", "4.x removed HookedTransformer, which circuit-tracer "
             "and SAELens subclass; use 3.2.1"),
    KnownBad("transformer-lens", ">=3.3,<4.0", "needs transformers >= 5.4, which circuit-tracer "
             "0.5 forbids", only_with="circuit-tracer"),
    KnownBad("transformers", "==4.57.2", "tokenizer loading calls the Hub even with "
             "HF_HUB_OFFLINE=1 (_patch_mistral_regex); use 4.57.1"),
    KnownBad("transformers", "==4.57.3", "tokenizer loading calls the Hub even with "
             "HF_HUB_OFFLINE=1 (_patch_mistral_regex); use 4.57.1"),
    KnownBad("nnsight", ">=0.7", "removed nnsight.intervention.tracing: circuit-tracer's nnsight "
             "backend does not import; use 0.6.1"),
    KnownBad("huggingface-hub", ">=1.0", "circuit-tracer 0.5 and transformers 4.57 need < 1.0",
             only_with="circuit-tracer"),
)


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def warnings_for(versions: dict[str, str | None]) -> list[str]:
    from packaging.specifiers import SpecifierSet
    out = []
    for rule in KNOWN_BAD:
        v = versions.get(rule.package)
        if rule.only_with and versions.get(rule.only_with) is None:
            continue  # e.g. the qwen35 profile: no circuit-tracer, so TL 3.9 is right there
        if v is not None and Version(v) in SpecifierSet(rule.bad):
            out.append(f"{rule.package} {v}: {rule.why}")
    return out
