"""Part ``model-names``: registered checkpoints become TransformerLens model names.

``HookedTransformer.from_pretrained("Qwen/Qwen3-8B-Base")`` (or an alias) needs the repo id in
``OFFICIAL_MODEL_NAMES``; TransformerLens 3.2.1 lists Qwen3-0.6B-Base but none of the larger Base
models. Every registered model whose family declares ``HOOKED_TRANSFORMER`` is added, in place
and in TransformerLens's own order, unless upstream already lists it.
"""

from __future__ import annotations

from typing import Any

from qwen_interp.adapters import AlreadyUpstream, NothingToChange
from qwen_interp.patching import PatchSet
from qwen_interp.specs import HOOKED_TRANSFORMER

from .families import models, needed

ADDED = "added"
UPSTREAM = "already upstream"
ALIASES = "aliases added"  # new aliases of names upstream already lists


def sorted_position(names: list[str], name: str) -> int:
    """Where ``name`` goes in a list kept in TransformerLens's order: case-insensitive
    alphabetical, as its tests/unit/test_supported_models.py requires of OFFICIAL_MODEL_NAMES
    and of MODEL_ALIASES's keys."""
    folded = name.casefold()
    return next((i for i, n in enumerate(names) if n.casefold() > folded), len(names))


def _insert(patches: PatchSet, target: list, index: int, item: Any) -> None:
    """Insert in place at ``index``: appended through the PatchSet, whose undo removes that very
    object wherever it is, then moved into place."""
    patches.append(target, item)
    target.insert(index, target.pop())


def _set_sorted_key(patches: PatchSet, table: dict, key: Any, value: Any) -> None:
    """``table[key] = value``, a new key placed in sorted order in place: the keys after it are
    moved behind it (same values); undo drops it, leaving upstream's order."""
    if key in table:
        patches.setitem(table, key, value)
        return
    tail = list(table)[sorted_position(list(table), key):]
    patches.setitem(table, key, value)
    for k in tail:
        table[k] = table.pop(k)


def detail(added: list[str], upstream: list[str], aliases: list[str]) -> str:
    """``"added: A, B; already upstream: C; aliases added: c"`` (empty sections left out)."""
    return "; ".join(f"{label}: {', '.join(names)}"
                     for label, names in ((ADDED, added), (UPSTREAM, upstream), (ALIASES, aliases))
                     if names)


def apply(patches: PatchSet, registry: Any) -> str:
    import transformer_lens.loading_from_pretrained as loading
    import transformer_lens.supported_models as sm

    needed(registry, HOOKED_TRANSFORMER)
    specs = models(registry, HOOKED_TRANSFORMER)
    if not specs:
        raise NothingToChange(f"no registered model of a {HOOKED_TRANSFORMER!r} family")
    # loading_from_pretrained imported these very objects: mutate in place, never rebind.
    assert loading.OFFICIAL_MODEL_NAMES is sm.OFFICIAL_MODEL_NAMES
    assert loading.MODEL_ALIASES is sm.MODEL_ALIASES
    known_aliases = {a.lower() for names in sm.MODEL_ALIASES.values() for a in names}
    added, upstream, aliases = [], [], []
    for spec in specs:
        if spec.repo_id in sm.OFFICIAL_MODEL_NAMES:
            upstream.append(spec.repo_id)
        else:
            at = sorted_position(sm.OFFICIAL_MODEL_NAMES, spec.repo_id)
            _insert(patches, sm.OFFICIAL_MODEL_NAMES, at, spec.repo_id)
            added.append(spec.repo_id)
        new_aliases = [a for a in spec.aliases if a.lower() not in known_aliases]
        if new_aliases:
            merged = [*sm.MODEL_ALIASES.get(spec.repo_id, []), *new_aliases]
            _set_sorted_key(patches, sm.MODEL_ALIASES, spec.repo_id, merged)
            if spec.repo_id in upstream:
                aliases.extend(new_aliases)
        if spec.repo_id in added:  # DEFAULT_MODEL_ALIASES[i] belongs to OFFICIAL_MODEL_NAMES[i]
            default = sm.MODEL_ALIASES.get(spec.repo_id, [spec.repo_id])[0]
            _insert(patches, sm.DEFAULT_MODEL_ALIASES, at, default)
    if not patches:
        raise AlreadyUpstream(detail(added, upstream, aliases))
    return detail(added, upstream, aliases)
