"""The adapter base: one lifecycle for every adapter that bridges an upstream package.

An adapter declares its :class:`Part` s: which upstream module each changes, what it changes, and
(optionally) a probe that says upstream already does it. The base does the rest, the same way
for every adapter:

- **arm**: ``activate(registry)`` runs when the adapter's top-level module is imported
  (:mod:`qwen_interp.activation`); each part then waits for its own module
  (:mod:`qwen_interp.import_watch`), so a part of a submodule nobody imports costs nothing;
- **probe**: a part whose probe says upstream already has the change stands down;
- **apply**: the part changes upstream only through its own :class:`~qwen_interp.patching.PatchSet`;
  a part that raises is undone at once and reported as failed, the other parts stay (a part
  with nothing to change in this upstream raises :class:`NothingToChange`: inactive);
- **undo**: ``deactivate()`` undoes every part, last applied first;
- **report**: ``status()`` is one :class:`PartStatus` per part, data that ``qwen-interp doctor``
  prints and tests read.

Third-party adapters may implement the :class:`~qwen_interp.specs.Adapter` protocol directly;
subclassing :class:`AdapterBase` is the short way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import import_watch
from .patching import PatchSet

log = logging.getLogger(__name__)

BRIDGED = "bridged"  # qwen-interp changed upstream
UPSTREAM = "upstream"  # upstream already does it: stood down, nothing changed
FAILED = "failed"  # applying raised; whatever the part had changed was undone
INACTIVE = "inactive"  # not applied (yet): its module is not imported, or the adapter is off
STATES = (BRIDGED, UPSTREAM, FAILED, INACTIVE)


class AlreadyUpstream(Exception):
    """Raised by a part's ``apply`` when it finds upstream already has the change (a probe that
    needs the module's contents). The part stands down; the message says why."""


class NothingToChange(Exception):
    """Raised by a part's ``apply`` when this upstream offers nothing for it to change (e.g. a
    class without the method the part wraps). The part is reported inactive with the message."""


@dataclass(frozen=True)
class PartStatus:
    """Where one part of one adapter stands. ``detail`` is one line for people."""

    adapter: str
    part: str
    state: str  # one of STATES
    detail: str = ""

    def line(self) -> str:
        return f"{self.part}: {self.state}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Part:
    """One change to one upstream module.

    ``apply(patches, registry)`` makes the change through ``patches`` and returns a one-line
    detail ("" for none); it raises :class:`AlreadyUpstream` to stand down. ``probe(registry)``,
    when given, runs first: True means upstream already has the change, so ``apply`` is skipped.
    """

    name: str
    module: str  # the upstream module the part changes; applied once it is imported
    changes: str  # what it changes, one line (doctor, docs)
    apply: Callable[[PatchSet, Any], str | None]
    probe: Callable[[Any], bool] | None = None


class AdapterBase:
    """Subclass, set ``name`` and ``module``, and return the parts from :meth:`parts`."""

    name: str = ""
    module: str = ""

    def __init__(self) -> None:
        self.active = False
        self.registry: Any = None
        self._patches: dict[str, PatchSet] = {}
        self._applied: list[str] = []  # part names, in the order applied
        self._status: dict[str, PartStatus] = {}
        self._modules: list[str] = []  # the upstream modules the parts wait for

    # --- what a subclass provides ------------------------------------------------------------
    def parts(self) -> list[Part]:
        raise NotImplementedError

    # --- the lifecycle -------------------------------------------------------------------------
    def activate(self, registry: Any) -> None:
        if self.active:
            return
        self.active = True
        self.registry = registry
        for part in self.parts():
            if part.module not in self._modules:
                self._modules.append(part.module)
            self._status[part.name] = PartStatus(self.name, part.name, INACTIVE,
                                                 f"{part.module} not imported")
            import_watch.when_imported(part.module, self._runner(part))

    def _runner(self, part: Part) -> Callable[[], None]:
        def run() -> None:
            if self.active and part.name not in self._applied:  # late import after deactivate
                self._apply(part)
        return run

    def _apply(self, part: Part) -> None:
        patches = PatchSet()
        try:
            if part.probe is not None and part.probe(self.registry):
                self._set(part, UPSTREAM, "upstream already has it")
                return
            detail = part.apply(patches, self.registry) or ""
        except AlreadyUpstream as exc:
            patches.undo()
            self._set(part, UPSTREAM, str(exc) or "upstream already has it")
            return
        except NothingToChange as exc:
            patches.undo()
            self._set(part, INACTIVE, str(exc) or "nothing to change")
            return
        except Exception as exc:  # noqa: BLE001 - an upstream import must not break because of us
            try:
                patches.undo()
            except Exception:  # noqa: BLE001 - reported with the error below
                log.exception("qwen-interp adapter %r part %r failed to undo itself",
                              self.name, part.name)
            self._set(part, FAILED, f"{type(exc).__name__}: {exc}")
            log.warning("qwen-interp adapter %r part %r failed and was undone: %s",
                        self.name, part.name, exc)
            return
        self._patches[part.name] = patches
        self._applied.append(part.name)
        self._set(part, BRIDGED, detail)

    def _set(self, part: Part, state: str, detail: str) -> None:
        self._status[part.name] = PartStatus(self.name, part.name, state,
                                             " ".join(detail.split()))

    def deactivate(self) -> None:
        errors = []
        for name in reversed(self._applied):
            try:
                self._patches.pop(name).undo()
            except Exception as exc:  # noqa: BLE001 - undo the other parts first
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        self._applied.clear()
        self._patches.clear()
        self._status.clear()
        self._modules.clear()
        self.active = False
        self.registry = None
        if errors:
            raise RuntimeError(f"adapter {self.name!r} could not undo: {'; '.join(errors)}")

    def modules(self) -> list[str]:
        """The upstream modules this adapter's parts change, in the order declared (importing
        them applies the parts: ``qwen-interp doctor`` does, to report what really happens)."""
        return list(self._modules)

    def status(self) -> list[PartStatus]:
        if not self.active:
            return [PartStatus(self.name, "*", INACTIVE, f"{self.module} not imported")]
        return list(self._status.values())

    def failures(self) -> list[PartStatus]:
        return [s for s in self.status() if s.state == FAILED]
