"""Hook specifications: what a qwen-interp plugin can provide.

Every hook is a *register callback* hook (as in simonw's ``llm``): it receives a ``register``
function and calls it once per record. A plugin implements any subset of them::

    from qwen_interp import hookimpl
    from qwen_interp.specs import ModelSpec

    @hookimpl
    def register_models(register):
        register(ModelSpec(repo_id="me/Qwen3-Tiny", architecture="Qwen3ForCausalLM", ...))

and is found through the ``qwen_interp`` entry-point group, like the built-in plugins.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

from .specs import (Adapter, Command, DoctorCheck, HookNameMap, ModelFamily, ModelSpec, SAERelease,
                    TranscoderFormat, TranscoderRelease)

hookspec = pluggy.HookspecMarker("qwen_interp")
hookimpl = pluggy.HookimplMarker("qwen_interp")


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register checkpoints (repo id, aliases, config facts) that adapters should make loadable."""


@hookspec
def register_hook_name_maps(register: Callable[[HookNameMap], None]) -> None:
    """Register, per architecture, the names of hook points in TL, TransformerBridge, HF, nnsight."""


@hookspec
def register_transcoder_releases(register: Callable[[TranscoderRelease], None]) -> None:
    """Register published transcoders (repo id, model, hook points, aliases)."""


@hookspec
def register_transcoder_formats(register: Callable[[TranscoderFormat], None]) -> None:
    """Register on-disk transcoder formats and their loaders."""


@hookspec
def register_sae_releases(register: Callable[[SAERelease], None]) -> None:
    """Register published SAE releases (name, repo, model, sizes)."""


@hookspec
def register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register adapters that bridge an upstream package (TransformerLens, circuit-tracer, ...)."""


@hookspec
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register model architectures: config class, hook names, capabilities, offline stand-in."""


@hookspec
def register_commands(register: Callable[[Command], None]) -> None:
    """Register ``qwen-interp`` subcommands."""


@hookspec
def register_doctor_checks(register: Callable[[DoctorCheck], None]) -> None:
    """Register checks that ``qwen-interp doctor`` runs (e.g. known-bad upstream versions)."""


@hookspec
def register_upstream_patches(register: Callable[[Any], None]) -> None:
    """Register upstream-ready patches: one ``UpstreamProject`` per upstream distribution."""
