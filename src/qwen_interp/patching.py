"""Reversible changes to upstream objects.

Adapters never assign to upstream state directly: they go through a ``PatchSet``, which records
what was there before so that ``undo()`` restores it exactly (same objects, same order).
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


class PatchConflict(RuntimeError):
    """``undo()`` found an attribute that no longer holds the value this PatchSet put there
    (someone else replaced it since): that attribute is left as it is, never clobbered."""


def _own_entry(obj: Any, name: str) -> Any:
    """What undo must put back for ``obj.name``: the raw entry of ``obj``'s own namespace, not
    ``getattr`` (which binds a classmethod to ``obj`` and finds inherited attributes: restoring
    that would leave a bound method, or a copy of the parent's attribute, in the class)."""
    ns = getattr(obj, "__dict__", None)
    if ns is None:
        return getattr(obj, name, _MISSING)
    return ns.get(name, _MISSING)


class PatchSet:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Any, Any, Any]] = []

    def __bool__(self) -> bool:
        return bool(self._undo)

    def setattr(self, obj: Any, name: str, value: Any, restore: Any = _MISSING) -> None:
        """Set ``obj.name``; undo puts back what was there, or ``restore`` if given (for a module
        that imported one of our wrappers by name: upstream would hold the original there)."""
        old = _own_entry(obj, name) if restore is _MISSING else restore
        self._undo.append(("attr", obj, name, (old, value)))
        setattr(obj, name, value)

    def wrap(self, obj: Any, name: str, make_wrapper: Any) -> Any:
        """Replace ``obj.name`` with ``make_wrapper(original)`` and return the wrapper. The
        wrapper's ``__wrapped__`` is the original (as ``functools.wraps`` sets it), so upstream's
        own function stays reachable; ``undo()`` puts the original back."""
        original = getattr(obj, name)
        wrapper = make_wrapper(original)
        if getattr(wrapper, "__wrapped__", None) is None:
            wrapper.__wrapped__ = original
        self.setattr(obj, name, wrapper)
        return wrapper

    def targets(self) -> list[tuple[Any, str]]:
        """``(object, attribute name)`` of every attribute set now, in the order they were set
        (for tests that compare upstream before and after)."""
        return [(obj, key) for kind, obj, key, _ in self._undo if kind == "attr"]

    def append(self, target: list[Any], item: Any) -> None:
        """Append ``item`` to a list in place (upstream modules import the list object itself)."""
        target.append(item)
        self._undo.append(("append", target, item, None))

    def setitem(self, target: dict[Any, Any], key: Any, value: Any) -> None:
        self._undo.append(("item", target, key, target.get(key, _MISSING)))
        target[key] = value

    def undo(self) -> None:
        """Restore everything, last change first. An attribute someone else replaced after us is
        left alone and reported by one :class:`PatchConflict` once the rest is restored."""
        conflicts = []
        while self._undo:
            kind, obj, key, old = self._undo.pop()
            if kind == "attr":
                old, ours = old
                if _own_entry(obj, key) is not ours:
                    conflicts.append(f"{getattr(obj, '__name__', type(obj).__name__)}.{key}")
                    continue
                if old is _MISSING:
                    # It was inherited (or absent): drop ours so lookup finds the original again.
                    if _own_entry(obj, key) is not _MISSING:
                        delattr(obj, key)
                else:
                    setattr(obj, key, old)
            elif kind == "append":
                # Remove the last occurrence: the one we added, even if upstream has an equal item.
                for i in range(len(obj) - 1, -1, -1):
                    if obj[i] is key:
                        del obj[i]
                        break
            elif old is _MISSING:
                obj.pop(key, None)
            else:
                obj[key] = old
        if conflicts:
            raise PatchConflict(f"replaced by someone else since qwen-interp patched them, so "
                                f"left as they are: {', '.join(reversed(conflicts))}")
