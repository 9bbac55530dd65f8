"""Registries: every record the plugins registered, keyed by what users type."""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from dataclasses import dataclass, field
import pluggy

from .specs import (Adapter, HookNameMap, ModelSpec, SAERelease, TranscoderFormat,
                    TranscoderRelease)


class RegistryError(ValueError):
    """A plugin's records cannot be used. ``plugins`` names the plugins involved, the one to
    blame last (a broken plugin, or the later of two that conflict)."""

    def __init__(self, message: str, plugins: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.plugins = plugins


@dataclass
class Registry:
    models: dict[str, ModelSpec] = field(default_factory=dict)
    hook_name_maps: dict[str, HookNameMap] = field(default_factory=dict)
    transcoder_releases: dict[str, TranscoderRelease] = field(default_factory=dict)
    transcoder_formats: dict[str, TranscoderFormat] = field(default_factory=dict)
    sae_releases: dict[str, SAERelease] = field(default_factory=dict)
    adapters: dict[str, Adapter] = field(default_factory=dict)
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
        raise KeyError(f"no registered transcoder {name!r}; known: {sorted(self.transcoder_releases)}")

    def hook_names(self, architecture: str) -> HookNameMap:
        try:
            return self.hook_name_maps[architecture]
        except KeyError:
            raise KeyError(f"no hook-name map for {architecture!r}") from None


# (hook name, table attribute, record type, key of a record, what to call it in errors)
TABLES = (
    ("register_models", "models", ModelSpec, lambda r: r.repo_id, "model"),
    ("register_hook_name_maps", "hook_name_maps", HookNameMap, lambda r: r.architecture,
     "hook-name map"),
    ("register_transcoder_releases", "transcoder_releases", TranscoderRelease,
     lambda r: r.repo_id, "transcoder release"),
    ("register_transcoder_formats", "transcoder_formats", TranscoderFormat, lambda r: r.name,
     "transcoder format"),
    ("register_sae_releases", "sae_releases", SAERelease, lambda r: r.release, "SAE release"),
    ("register_adapters", "adapters", Adapter, lambda r: r.name, "adapter"),
)


def collect(pm: pluggy.PluginManager) -> Registry:
    """Build a fresh registry from every registered plugin; the caller's registry is kept.

    Raises ``RegistryError`` (with ``.plugins``) when a plugin's hook raises, when it registers
    something that is not a well-formed record, or when two plugins register different records
    under one key or alias (naming both; the later-registered one is blamed)."""
    order = [name for name, _ in pm.list_name_plugin()]  # registration order
    reg = Registry()
    for hook_name, attr, record_type, key_of, kind in TABLES:
        table, owners = getattr(reg, attr), {}
        # Call each implementation separately so that errors can name the plugin.
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            def register(record, _plugin=impl.plugin_name):
                problem = record_problem(record, record_type)
                if problem:
                    raise RegistryError(f"plugin {_plugin!r} registered a malformed {kind}: "
                                        f"{problem}", (_plugin,))
                key = key_of(record)
                if key in table and table[key] != record:
                    raise _conflict(f"a {kind} {key!r}", owners[key], _plugin, order)
                table.setdefault(key, record)
                owners.setdefault(key, _plugin)
            try:
                impl.function(**({"register": register} if "register" in impl.argnames else {}))
            except RegistryError:
                raise
            except Exception as exc:  # noqa: BLE001 - blamed on the plugin, not a crash
                raise RegistryError(f"plugin {impl.plugin_name!r}: its {hook_name} hook raised "
                                    f"{type(exc).__name__}: {exc}", (impl.plugin_name,)) from exc
        reg.owners[attr] = owners
    _check_aliases(reg, order)
    return reg


def _conflict(what: str, first: str, second: str, order: list[str]) -> RegistryError:
    """Two plugins claim ``what``: the message names both, ``plugins`` ends with the later one."""
    rank = {name: i for i, name in enumerate(order)}
    earlier, later = sorted((first, second), key=lambda n: rank.get(n, len(rank)))
    return RegistryError(f"plugin {later!r} registers {what} that plugin {earlier!r} already "
                         f"registered differently", (earlier, later))


def _check_aliases(reg: Registry, order: list[str]) -> None:
    seen: dict[str, tuple[str, str]] = {}  # lower-case name -> (key, table)
    for attr in ("models", "transcoder_releases"):
        for key, rec in getattr(reg, attr).items():
            for name in (key, *rec.aliases):
                first = seen.setdefault(name.lower(), (key, attr))
                if first != (key, attr):
                    owner = reg.owners[first[1]][first[0]]
                    raise _conflict(f"the name {name!r} (for {key!r}; it is also {first[0]!r}'s)",
                                    owner, reg.owners[attr][key], order)


# --- record checks ------------------------------------------------------------------------------
def record_problem(record, record_type) -> str | None:
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
    return _fields_problem(record)


def _fields_problem(record) -> str | None:
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


def _matches(value, tp) -> bool:
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
    if origin is collections.abc.Callable:
        return callable(value)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_name(tp) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _short(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '...' if len(text) > 80 else text}"
