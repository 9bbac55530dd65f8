"""Registries: every record the plugins registered, keyed by what users type."""

from __future__ import annotations

from dataclasses import dataclass, field
import pluggy

from .specs import (Adapter, HookNameMap, ModelSpec, SAERelease, TranscoderFormat,
                    TranscoderRelease)


class RegistryError(ValueError):
    pass


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


# (hook name, table attribute, key of a record, what to call it in errors)
TABLES = (
    ("register_models", "models", lambda r: r.repo_id, "model"),
    ("register_hook_name_maps", "hook_name_maps", lambda r: r.architecture, "hook-name map"),
    ("register_transcoder_releases", "transcoder_releases", lambda r: r.repo_id,
     "transcoder release"),
    ("register_transcoder_formats", "transcoder_formats", lambda r: r.name, "transcoder format"),
    ("register_sae_releases", "sae_releases", lambda r: r.release, "SAE release"),
    ("register_adapters", "adapters", lambda r: r.name, "adapter"),
)


def collect(pm: pluggy.PluginManager) -> Registry:
    """Build a fresh registry from every registered plugin. Raises ``RegistryError`` naming both
    plugins when two register different records under one key; the caller's registry is kept."""
    reg = Registry()
    for hook_name, attr, key_of, kind in TABLES:
        table, owners = getattr(reg, attr), {}
        # Call each implementation separately so that errors can name the plugin.
        for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order
            def register(record, _plugin=impl.plugin_name):
                key = key_of(record)
                if key in table and table[key] != record:
                    raise RegistryError(f"plugin {_plugin!r} registers a {kind} {key!r} that "
                                        f"plugin {owners[key]!r} already registered differently")
                table.setdefault(key, record)
                owners.setdefault(key, _plugin)
            impl.function(**({"register": register} if "register" in impl.argnames else {}))
        reg.owners[attr] = owners
    _check_aliases(reg)
    return reg


def _check_aliases(reg: Registry) -> None:
    seen: dict[str, str] = {}
    for table in (reg.models, reg.transcoder_releases):
        for key, rec in table.items():
            for name in (key, *rec.aliases):
                owner = seen.setdefault(name.lower(), key)
                if owner != key:
                    raise RegistryError(f"name {name!r} is claimed by both {owner!r} and {key!r}")
