"""The 14 Qwen-Scope releases (see docs/formats.md) as ``SAERelease`` records.

Qwen-Scope repos carry no config file: the model, width and k are encoded in the repo name
``Qwen/SAE-Res-{model}-W{N}K-L0_{k}``, and each layer is one ``layer{n}.sae.pt``.
"""

from __future__ import annotations

import re

from qwen_interp.specs import SAERelease

# (model name in the repo id, SAELens release stem, d_model, n_layers, ((width K, k), ...))
_QWEN_SCOPE = (
    ("Qwen3-1.7B-Base", "3-1.7b-base", 2048, 28, ((32, 50), (32, 100))),
    ("Qwen3-8B-Base", "3-8b-base", 4096, 36, ((64, 50), (64, 100))),
    ("Qwen3-30B-A3B-Base", "3-30b-a3b-base", 2048, 48, ((32, 50), (128, 100))),
    ("Qwen3.5-2B-Base", "3.5-2b-base", 2048, 24, ((32, 50), (32, 100))),
    ("Qwen3.5-9B-Base", "3.5-9b-base", 4096, 32, ((64, 50), (64, 100))),
    ("Qwen3.5-27B", "3.5-27b", 5120, 64, ((80, 50), (80, 100))),
    ("Qwen3.5-35B-A3B-Base", "3.5-35b-a3b-base", 2048, 40, ((32, 50), (128, 100))),
)

QWEN_SCOPE_RELEASES: tuple[SAERelease, ...] = tuple(
    SAERelease(release=f"qwen-scope-{stem}-w{width}k-l{k}",
               repo_id=f"Qwen/SAE-Res-{model}-W{width}K-L0_{k}",
               model_repo_id=f"Qwen/{model}", d_model=d_model, d_sae=width * 1024, k=k,
               n_layers=n_layers)
    for model, stem, d_model, n_layers, sizes in _QWEN_SCOPE
    for width, k in sizes
)

_LAYER_FILE = re.compile(r"layer(\d+)\.sae\.pt$")


def layer_of(filename: str) -> int:
    """Layer number of a ``layer{n}.sae.pt`` file name (or path)."""
    match = _LAYER_FILE.search(str(filename))
    if match is None:
        raise ValueError(f"{filename!r} is not a Qwen-Scope layer file (layer{{n}}.sae.pt)")
    return int(match.group(1))


def layer_file(release: SAERelease, layer: int) -> str:
    return release.file_template.format(layer=layer)


def sae_id(layer: int) -> str:
    """SAELens's id for a layer of a Qwen-Scope release."""
    return f"layer{layer}"
