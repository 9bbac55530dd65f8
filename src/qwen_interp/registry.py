"""Registries: every record the plugins registered, keyed by what users type.

:func:`collect` calls each hook in pluggy's own order (``tryfirst`` implementations first,
``trylast`` ones last, otherwise the most recently registered plugin first), so each table lists
its records in that order; where order matters (the first transcoder format whose ``detect``
says yes loads a folder) a plugin asks for its place with ``tryfirst`` / ``trylast``.
``docs/hooks.md`` has the rules.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import pluggy

from .specs import (Adapter, Command, DoctorCheck, HookNameMap, ModelFamily, ModelSpec,
                    SAERelease, TranscoderFormat, TranscoderRelease)
from .upstream_patches import UpstreamProject


class RegistryError(ValueError):
    """A plugin's records cannot be used. ``plugins`` names the plugins involved, the one to
    blame last (a broken plugin, or the later of two that conflict)."""

    def __init__(self, message: str, plugins: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.plugins = plugins


@dataclass
class Registry:
    models: dict[str, ModelSpec] = field(default_factory=dict)
    model_families: dict[str, ModelFamily] = field(default_factory=dict)
    # architecture -> its family's hook_names (derived: families are the one source)
    hook_name_maps: dict[str, HookNameMap] = field(default_factory=dict)
    transcoder_releases: dict[str, TranscoderRelease] = field(default_factory=dict)
    transcoder_formats: dict[str, TranscoderFormat] = field(default_factory=dict)
    sae_releases: dict[str, SAERelease] = field(default_factory=dict)
    adapters: dict[str, Adapter] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    doctor_checks: dict[str, DoctorCheck] = field(default_factory=dict)
    upstream_projects: dict[str, UpstreamProject] = field(default_factory=dict)
    # table name -> key -> name of the plugin that registered it (for doctor and errors)
    owners: dict[str, dict[str, str]] = field(default_factory=dict)

    # --- lookups -------------------------------------------------------------------------
    def model(self, name: str) -> ModelSpec:
        """A model by repo id or alias (case-insensitive)."""
        wanted = name.lower()
        for spec in self.models.values():
            if wanted == spec.repo_id.lower() or wanted in (a.lower() for a in spec.aliases):
                return spec
        raise KeyError(f"no registered model {name!r}; known: {sorted(self.models)}")

    def transcoder_release(self, name: str) -> TranscoderRelease:
        wanted = name.lower()
        for rel in self.transcoder_releases.values():
            if wanted == rel.repo_id.lower() or wanted in (a.lower() for a in rel.aliases):
                return rel
        raise KeyError(f"no registered transcoder {name!r}; known: "
                       f"{sorted(self.transcoder_releases)}")

    def hook_names(self, architecture: str) -> HookNameMap:
        try:
            return self.hook_name_maps[architecture]
        except KeyError:
            raise KeyError(f"no hook-name map for {architecture!r}") from None

    def model_family(self, architecture: str) -> ModelFamily:
        try:
            return self.model_families[architecture]
        except KeyError:
            raise KeyError(f"no model family for {architecture!r}; known: "
                           f"{sorted(self.model_families)}") from None


@dataclass(frozen=True)
class Table:
    """Where one hook's records go: ``key(record)`` is what users type to find one."""

    hook: str
    attr: str
    record_type: type
    key: typing.Callable[[Any], str]
    kind: str  # what to call a record in errors


TABLES = (
    Table("register_models", "models", ModelSpec, lambda r: r.repo_id, "model"),
    Table("register_model_families", "model_families", ModelFamily, lambda r: r.architecture,
          "model family"),
    Table("register_transcoder_releases", "transcoder_releases", TranscoderRelease,
          lambda r: r.repo_id, "transcoder release"),
    Table("register_transcoder_formats", "transcoder_formats", TranscoderFormat,
          lambda r: r.name, "transcoder format"),
    Table("register_sae_releases", "sae_releases", SAERelease, lambda r: r.release,
          "SAE release"),
    Table("register_adapters", "adapters", Adapter, lambda r: r.name, "adapter"),
    Table("register_commands", "commands", Command, lambda r: r.name, "command"),
    Table("register_doctor_checks", "doctor_checks", DoctorCheck, lambda r: r.name,
          "doctor check"),
    Table("register_upstream_patches", "upstream_projects", UpstreamProject,
          lambda r: r.distribution, "upstream project"),
)


def call_order(hook: pluggy.HookCaller) -> list[pluggy.HookImpl]:
    """The implementations of ``hook`` in the order pluggy calls them: ``get_hookimpls()`` lists
    them trylast first and tryfirst last, and pluggy walks that list from the end."""
    return list(reversed(hook.get_hookimpls()))


def collect(pm: pluggy.PluginManager) -> Registry:
    """Build a fresh registry from every registered plugin; the caller's registry is kept.

    Each hook's implementations run in pluggy's call order (:func:`call_order`), one at a time,
    so that an error names its plugin. Raises ``RegistryError`` (with ``.plugins``) when a
    plugin's hook raises or is a wrapper, when it registers something that is not a well-formed
    record, or when two plugins register different records under one key or alias (naming both;
    the later-registered one is blamed)."""
    order = [name for name, _ in pm.list_name_plugin()]  # registration order
    reg = Registry()
    for table in TABLES:
        records: dict[str, Any] = getattr(reg, table.attr)
        owners: dict[str, str] = {}
        for impl in call_order(getattr(pm.hook, table.hook)):
            _call(impl, table, records, owners, order)
        reg.owners[table.attr] = owners
    _derive_hook_name_maps(reg)
    _check_aliases(reg, order)
    return reg


def _call(impl: pluggy.HookImpl, table: Table, records: dict[str, Any], owners: dict[str, str],
          order: list[str]) -> None:
    plugin = impl.plugin_name
    if impl.hookwrapper or impl.wrapper:
        raise RegistryError(f"plugin {plugin!r}: its {table.hook} hook is a wrapper; qwen-interp "
                            f"hooks are register callbacks, which wrappers cannot take part in",
                            (plugin,))

    def register(record: Any) -> None:
        problem = record_problem(record, table.record_type)
        if problem:
            raise RegistryError(f"plugin {plugin!r} registered a malformed {table.kind}: "
                                f"{problem}", (plugin,))
        key = table.key(record)
        if key in records and records[key] != record:
            raise _conflict(f"a {table.kind} {key!r}", owners[key], plugin, order)
        records.setdefault(key, record)
        owners.setdefault(key, plugin)

    try:
        impl.function(**({"register": register} if "register" in impl.argnames else {}))
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - blamed on the plugin, not a crash
        raise RegistryError(f"plugin {plugin!r}: its {table.hook} hook raised "
                            f"{type(exc).__name__}: {exc}", (plugin,)) from exc


def _derive_hook_name_maps(reg: Registry) -> None:
    """Each model family's ``hook_names`` is the hook-name map of its architecture."""
    reg.hook_name_maps = {arch: fam.hook_names for arch, fam in reg.model_families.items()}
    reg.owners["hook_name_maps"] = dict(reg.owners["model_families"])


def _conflict(what: str, first: str, second: str, order: list[str]) -> RegistryError:
    """Two plugins claim ``what``: the message names both, ``plugins`` ends with the later one."""
    rank = {name: i for i, name in enumerate(order)}
    earlier, later = sorted((first, second), key=lambda n: rank.get(n, len(rank)))
    return RegistryError(f"plugin {later!r} registers {what} that plugin {earlier!r} already "
                         f"registered differently", (earlier, later))


def _check_aliases(reg: Registry, order: list[str]) -> None:
    """A name (repo id or alias) means one model or transcoder. The error names the record of
    the later-registered plugin first."""
    rank = {name: i for i, name in enumerate(order)}
    seen: dict[str, tuple[str, str]] = {}  # lower-case name -> (key, table)
    for attr in ("models", "transcoder_releases"):
        for key, rec in getattr(reg, attr).items():
            for name in (key, *rec.aliases):
                first = seen.setdefault(name.lower(), (key, attr))
                if first != (key, attr):
                    owned = [(reg.owners[a][k], k) for k, a in (first, (key, attr))]
                    (earlier, earlier_key), (later, later_key) = sorted(
                        owned, key=lambda o: rank.get(o[0], len(rank)))
                    raise _conflict(f"the name {name!r} (for {later_key!r}; it is also "
                                    f"{earlier_key!r}'s)", earlier, later, order)


# --- record checks ------------------------------------------------------------------------------
def record_problem(record: Any, record_type: type) -> str | None:
    """What is wrong with ``record`` as a ``record_type`` (field types included), or None."""
    if record_type is Adapter:
        if not isinstance(record, Adapter):
            return (f"expected an Adapter (name, module, activate, deactivate, status), got "
                    f"{_short(record)}")
        for name in ("name", "module"):
            if not isinstance(getattr(record, name), str):
                return f"Adapter.{name} must be str, got {_short(getattr(record, name))}"
        return None
    if not isinstance(record, record_type):
        return f"expected a {record_type.__name__}, got {_short(record)}"
    return _fields_problem(record) or _meaning_problem(record)


def _meaning_problem(record: Any) -> str | None:
    """What the field types allow but the record's users cannot take."""
    if isinstance(record, ModelFamily):
        if record.hook_names.architecture != record.architecture:
            return (f"ModelFamily {record.architecture!r} has hook_names for "
                    f"{record.hook_names.architecture!r}; they must name the same architecture")
    if isinstance(record, (Command, DoctorCheck)) and (not record.name or
                                                       record.name.split() != [record.name]):
        return (f"{type(record).__name__}.name must be one word, without spaces, got "
                f"{record.name!r}")
    return None


def _fields_problem(record: Any) -> str | None:
    hints = typing.get_type_hints(type(record))
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if not _matches(value, hints[f.name]):
            return (f"{type(record).__name__}.{f.name} must be {_type_name(hints[f.name])}, got "
                    f"{_short(value)}")
        if dataclasses.is_dataclass(value):
            inner = _fields_problem(value)
            if inner:
                return inner
        if isinstance(value, dict):
            for item in value.values():
                inner = _fields_problem(item) if dataclasses.is_dataclass(item) else None
                if inner:
                    return inner
    return None


def _matches(value: Any, tp: Any) -> bool:
    """isinstance for the annotations the records use (bool is not accepted as a number)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp in (int, float):  # an int is a fine float
        numbers = (int, float) if tp is float else int
        return isinstance(value, numbers) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is ...:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(_matches, value, args))
    if origin is dict:
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if origin in (frozenset, set):
        return isinstance(value, origin) and all(_matches(v, args[0]) for v in value)
    if origin is collections.abc.Callable:
        return callable(value)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '...' if len(text) > 80 else text}"
