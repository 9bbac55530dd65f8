"""Registries: every record the plugins registered, keyed by what users type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


def _adder(table: dict, key_of, kind: str):
    def register(record: Any) -> None:
        key = key_of(record)
        if key in table and table[key] != record:
            raise RegistryError(f"two plugins register different {kind} records for {key!r}")
        table[key] = record
    return register


def collect(pm: pluggy.PluginManager) -> Registry:
    """Build a fresh registry from every registered plugin (the old one stays valid on error)."""
    reg = Registry()
    hooks = pm.hook
    hooks.register_models(register=_adder(reg.models, lambda r: r.repo_id, "model"))
    hooks.register_hook_name_maps(
        register=_adder(reg.hook_name_maps, lambda r: r.architecture, "hook-name map"))
    hooks.register_transcoder_releases(
        register=_adder(reg.transcoder_releases, lambda r: r.repo_id, "transcoder release"))
    hooks.register_transcoder_formats(
        register=_adder(reg.transcoder_formats, lambda r: r.name, "transcoder format"))
    hooks.register_sae_releases(
        register=_adder(reg.sae_releases, lambda r: r.release, "SAE release"))
    hooks.register_adapters(register=_adder(reg.adapters, lambda r: r.name, "adapter"))
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
