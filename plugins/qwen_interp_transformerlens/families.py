"""Which models the TransformerLens parts act on: read from the registry's model families.

A model family (one ``ModelFamily`` record, registered by one plugin) declares capabilities; this
plugin acts on a family only for the capabilities it has (``qwen_interp.specs``):

- ``HOOKED_TRANSFORMER``: its checkpoints get TransformerLens model names, local checkpoint
  directories are accepted, ``n_ctx`` has a configurable default, and a too-long string input is an
  error instead of being cut silently;
- ``TL_FAST_LOAD`` / ``TL_FAST_FORWARD`` / ``TL_MOE``: the fast loader, the fast forward and the
  MoE path apply to it.

Nothing here names an architecture: a new family needs no edit in this plugin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwen_interp.adapters import NothingToChange


def model_families(registry: Any) -> dict[str, Any]:
    """architecture -> ``ModelFamily`` of every registered family ({} on a registry without the
    table)."""
    return dict(getattr(registry, "model_families", None) or {})


def architectures(registry: Any, capability: str) -> frozenset[str]:
    """The architectures whose family declares ``capability``."""
    return frozenset(arch for arch, family in model_families(registry).items()
                     if capability in family.capabilities)


def models(registry: Any, capability: str) -> list[Any]:
    """The registered ``ModelSpec`` s whose family declares ``capability``, in registry order."""
    wanted = architectures(registry, capability)
    return [spec for spec in registry.models.values() if spec.architecture in wanted]


def local_checkpoint_architecture(name: str) -> str | None:
    """The ``architectures[0]`` of a local checkpoint directory, or None if ``name`` is not one."""
    config = Path(name) / "config.json"
    if not config.is_file():
        return None
    try:
        return (json.loads(config.read_text()).get("architectures") or [None])[0]
    except (OSError, ValueError):
        return None


def needed(registry: Any, capability: str) -> frozenset[str]:
    """:func:`architectures`, raising ``NothingToChange`` when there are none: a part that no
    registered family asks for is inactive."""
    archs = architectures(registry, capability)
    if not archs:
        raise NothingToChange(f"no registered model family has capability {capability!r}")
    return archs
