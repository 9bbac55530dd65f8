"""Hook specifications: what a qwen-interp plugin can provide.

Every hook is a *register callback* hook (as in simonw's ``llm``): it receives a ``register``
function and calls it once per record. A plugin implements any subset of them::

    from qwen_interp import hookimpl
    from qwen_interp.specs import ModelSpec

    @hookimpl
    def register_models(register):
        register(ModelSpec(repo_id="me/Qwen3-Tiny-Base", architecture="Qwen3ForCausalLM", ...))

and is found through the ``qwen_interp`` entry-point group (or registered at run time with
``qwen_interp.register_plugin``). The rules every hook shares (``docs/hooks.md`` says more):

- **When**: each hook is called while the registry is built: once at ``import qwen_interp``,
  and again whenever a plugin is registered or unregistered at run time. A hook only registers
  records; the work happens later, when something uses them.
- **Order**: pluggy's: ``@hookimpl(tryfirst=True)`` implementations first, ``trylast=True``
  ones last, otherwise the most recently registered plugin first. The built-in plugins are
  registered before any third-party plugin, so a third-party plugin is called before them.
  Each registry table lists its records in call order.
- **Conflicts**: a table is keyed (a model by repo id, a format by name, ...). Registering an
  equal record again is harmless; a different record under a key (or alias) another plugin has
  is a conflict, and the later-registered plugin is refused: it cannot replace a built-in's
  record.
- **Errors**: a record that is not a well-formed instance of the hook's record type (field
  types are checked), a hook that raises, a hook wrapper, or a ``@hookimpl`` whose name matches
  no hook here: at load the plugin is skipped and ``qwen-interp doctor`` names it; at run time
  ``register_plugin`` raises ``RegistryError`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from .specs import (Adapter, Command, DoctorCheck, ModelFamily, ModelSpec, SAERelease,
                    TranscoderFormat, TranscoderRelease)
from .upstream_patches import UpstreamProject

hookspec = pluggy.HookspecMarker("qwen_interp")
hookimpl = pluggy.HookimplMarker("qwen_interp")


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register checkpoints: a Hub repo id, its aliases and the public facts of its
    ``config.json``.

    Adapters make each registered model loadable by its repo id or alias in their upstream
    package (TransformerLens's ``from_pretrained``, circuit-tracer's ``ReplacementModel``);
    CLT and SAE loaders check a dictionary against the model's facts before allocating; the
    offline test Hub builds a small stand-in with the same architecture flags.

    Called while the registry is built (at ``import qwen_interp``, and when a plugin is
    registered or unregistered at run time).

    :param register: call it once per :class:`~qwen_interp.specs.ModelSpec`. Its
        ``architecture`` should have a model family (:func:`register_model_families`).

    Example::

        @hookimpl
        def register_models(register):
            register(ModelSpec("me/Qwen3-Tiny-Base", "Qwen3ForCausalLM", d_model=256,
                               n_layers=4, n_heads=4, n_kv_heads=2, d_head=64, d_mlp=768,
                               tied_embeddings=True, aliases=("me-tiny",)))

    Order and conflicts: ``registry.models`` is keyed by ``repo_id``. Each name (repo id or
    alias, case-insensitive) means one model across all plugins; a name another plugin gave to
    a different model is a conflict, and the later-registered plugin is refused.

    Errors: a record that is not a ``ModelSpec`` with fields of the declared types (e.g.
    ``d_model="256"``), or a hook that raises, refuses the plugin (skipped at load, named by
    ``qwen-interp doctor``; ``RegistryError`` from ``register_plugin``).
    """


@hookspec
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register model architectures: the one record every adapter asks about an architecture.

    A :class:`~qwen_interp.specs.ModelFamily` ties together what supporting an architecture
    takes: ``config.json``'s ``architectures[0]``, the ``transformers`` config class, the hook
    names in every ecosystem, the capabilities adapters act on (``HOOKED_TRANSFORMER``,
    ``TL_FAST_LOAD``, ...), and the recipe of a small offline stand-in. Ecosystem plugins never
    name a model family: they ask the registry for the families with the capability they serve.

    Called while the registry is built (at ``import qwen_interp``, and when a plugin is
    registered or unregistered at run time).

    :param register: call it once per :class:`~qwen_interp.specs.ModelFamily`.

    Example::

        @hookimpl
        def register_model_families(register):
            register(ModelFamily("TinyForCausalLM", hf_config_class="TinyConfig",
                                 hook_names=TINY_HOOKS,
                                 capabilities=frozenset({HOOKED_TRANSFORMER})))

    Order and conflicts: ``registry.model_families`` is keyed by ``architecture``; a family's
    ``hook_names`` becomes ``registry.hook_name_maps[architecture]``. Two plugins registering
    different families for one architecture conflict; the later-registered plugin is refused.

    Errors: ``hook_names.architecture`` must equal ``architecture`` and capabilities must be
    strings; a malformed record or a hook that raises refuses the plugin.
    """


@hookspec
def register_transcoder_releases(register: Callable[[TranscoderRelease], None]) -> None:
    """Register published cross-layer transcoders (CLTs): repo id, the model they were
    trained on, their hook points and aliases.

    circuit-tracer's loaders then accept the release by repo id or alias, check that it is
    paired with its own model, and read its hook points from the record.

    Called while the registry is built (at ``import qwen_interp``, and when a plugin is
    registered or unregistered at run time).

    :param register: call it once per :class:`~qwen_interp.specs.TranscoderRelease`; its
        ``model_repo_id`` should be a registered model.

    Example::

        @hookimpl
        def register_transcoder_releases(register):
            register(TranscoderRelease("me/clt-qwen3-tiny", "me/Qwen3-Tiny-Base", n_layers=4,
                                       d_latent=1024, feature_input_hook="mlp.hook_in",
                                       feature_output_hook="mlp.hook_out",
                                       aliases=("me-clt",)))

    Order and conflicts: ``registry.transcoder_releases`` is keyed by ``repo_id``; repo ids and
    aliases share one namespace with the models'. A name another plugin gave to a different
    record is a conflict; the later-registered plugin is refused.

    Errors: a malformed record or a hook that raises refuses the plugin.
    """


@hookspec
def register_transcoder_formats(register: Callable[[TranscoderFormat], None]) -> None:
    """Register on-disk transcoder formats: how to recognise a folder and load it.

    circuit-tracer's transcoder loading walks ``registry.transcoder_formats`` in order and
    loads a folder with the first format whose ``detect(path)`` is true;
    ``load(path, **kwargs)`` returns a circuit-tracer transcoder (keyword arguments include
    ``release``, ``registry``, ``device`` and ``dtype``).

    Called while the registry is built (at ``import qwen_interp``, and when a plugin is
    registered or unregistered at run time).

    :param register: call it once per :class:`~qwen_interp.specs.TranscoderFormat`.

    Example::

        @hookimpl(tryfirst=True)  # consulted before the built-in formats
        def register_transcoder_formats(register):
            register(TranscoderFormat("acme", detect=lambda p: (p / "ACME.txt").is_file(),
                                      load=load_acme))

    Order and conflicts: order decides detection. Formats are listed in pluggy's call order:
    ``tryfirst`` implementations first, ``trylast`` ones last, otherwise the most recently
    registered plugin first (a third-party plugin before the built-ins). Keyed by ``name``; a
    different format under a name another plugin has is a conflict, and the later-registered
    plugin is refused.

    Errors: a malformed record or a hook that raises refuses the plugin; ``detect`` and
    ``load`` errors surface when a folder is loaded.
    """


@hookspec
def register_sae_releases(register: Callable[[SAERelease], None]) -> None:
    """Register published sparse-autoencoder releases (one SAE per layer): SAELens release
    name, repo, model, sizes, hook point and file names.

    The SAELens adapter adds each release SAELens does not know yet to its pretrained
    directory (standing down for those it has), so ``SAE.from_pretrained(release, "layer<n>")``
    works; ``qwen-interp saes`` lists them with their cache state.

    Called while the registry is built (at ``import qwen_interp``, and when a plugin is
    registered or unregistered at run time).

    :param register: call it once per :class:`~qwen_interp.specs.SAERelease`; its
        ``model_repo_id`` should be a registered model whose hook-name map has ``hook_point``.

    Example::

        @hookimpl
        def register_sae_releases(register):
            register(SAERelease("me-sae-tiny", "me/SAE-Tiny", "me/Qwen3-Tiny-Base",
                                d_model=256, d_sae=4096, k=50, n_layers=4))

    Order and conflicts: ``registry.sae_releases`` is keyed by ``release``; a different record
    under a release name another plugin has is a conflict, and the later-registered plugin is
    refused.

    Errors: a malformed record or a hook that raises refuses the plugin.
    """


@hookspec
def register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register adapters: objects that bridge one upstream package (TransformerLens,
    circuit-tracer, SAELens, ...) to the registered records.

    An adapter is armed when the registry is installed and activated when its ``module`` is
    imported (at once if it already is); ``deactivate()`` must restore upstream exactly
    (change it only through a :class:`~qwen_interp.patching.PatchSet`). ``status()`` reports
    one :class:`~qwen_interp.adapters.PartStatus` per part, which ``qwen-interp doctor``
    prints. Subclassing :class:`~qwen_interp.adapters.AdapterBase` gives all of this.

    Called while the registry is built (at ``import qwen_interp``, and when a plugin is
    registered or unregistered at run time; the previous adapters are deactivated first).

    :param register: call it once per adapter (the
        :class:`~qwen_interp.specs.Adapter` protocol: ``name``, ``module``, ``activate``,
        ``deactivate``, ``status``).

    Example::

        @hookimpl
        def register_adapters(register):
            register(MyToolAdapter())  # an AdapterBase subclass, module = "my_tool"

    Order and conflicts: ``registry.adapters`` is keyed by ``name`` and armed in its order
    (pluggy's call order), deactivated in reverse. Another object under a name another plugin
    has is a conflict; the later-registered plugin is refused.

    Errors: an object without the protocol, or a hook that raises, refuses the plugin. An
    adapter whose ``activate`` raises is undone and reported by ``doctor``; it never breaks the
    import of its upstream package.
    """


@hookspec
def register_commands(register: Callable[[Command], None]) -> None:
    """Register ``qwen-interp`` subcommands.

    The command line builds one subcommand per registered
    :class:`~qwen_interp.specs.Command`: ``configure(parser)`` adds its arguments to an
    argparse subparser; ``run(args)`` does the work and returns the exit code. An exception
    from ``run`` ends in one line on stderr and exit code 1, like the built-in commands.

    Called while the registry is built (at ``import qwen_interp``, and when a plugin is
    registered or unregistered at run time); ``configure`` runs each time the command line
    starts, ``run`` when the command is chosen.

    :param register: call it once per :class:`~qwen_interp.specs.Command`.

    Example::

        def configure(parser):
            parser.add_argument("--shout", action="store_true")

        @hookimpl
        def register_commands(register):
            register(Command("hello", "say hello", configure=configure,
                             run=lambda args: print("HELLO" if args.shout else "hello") or 0))

    Order and conflicts: keyed by ``name`` (one word); ``--help`` lists commands by name.
    A command under a name another plugin has is a conflict; the later-registered plugin is
    refused. One under the name of a command the CLI has itself (``doctor``, ``models``,
    ``trace``, ``patches``) is left out of the command line, with one line naming the plugin.

    Errors: a malformed record or a hook that raises refuses the plugin; a command whose
    ``configure`` raises is left out of the command line, with one line on stderr.
    """


@hookspec
def register_doctor_checks(register: Callable[[DoctorCheck], None]) -> None:
    """Register checks that ``qwen-interp doctor`` runs, e.g. known-bad versions of an
    upstream package (:func:`qwen_interp.compat.known_bad_check` builds one from rules).

    ``run()`` returns the problems it found, one line each; an empty list means all is well.
    Doctor prints each problem as ``WARNING: <line>`` and exits 1 if there is any.

    Called while the registry is built (at ``import qwen_interp``, and when a plugin is
    registered or unregistered at run time); each check's ``run()`` is called by every
    ``qwen-interp doctor``.

    :param register: call it once per :class:`~qwen_interp.specs.DoctorCheck`.

    Example::

        @hookimpl
        def register_doctor_checks(register):
            register(known_bad_check("my_tool-versions", (
                KnownBad("my-tool", ">=2.0", "2.x renamed the loader; use 1.4"),)))

    Order and conflicts: keyed by ``name`` (one word); checks run in the registry's order.
    Another check under a name another plugin has is a conflict; the later-registered plugin
    is refused.

    Errors: a malformed record or a hook that raises refuses the plugin; a check whose
    ``run()`` raises is reported by doctor as a problem (not a crash).
    """


@hookspec
def register_upstream_patches(register: Callable[[UpstreamProject], None]) -> None:
    """Register upstream-ready patches: one ``UpstreamProject`` per upstream distribution.

    An :class:`~qwen_interp.upstream_patches.UpstreamProject` lists, in order, the source
    patches that would make an upstream package do natively what the plugin's adapter does at
    run time. ``qwen-interp patches`` lists, renders, checks and writes them.

    Called while the registry is built (at ``import qwen_interp``, and when a plugin is
    registered or unregistered at run time); each patch's ``apply`` runs when the patches are
    rendered or checked.

    :param register: call it once per
        :class:`~qwen_interp.upstream_patches.UpstreamProject`.

    Example::

        @hookimpl
        def register_upstream_patches(register):
            from .upstream_patches import PROJECT  # UpstreamProject("my-tool", ...)
            register(PROJECT)

    Order and conflicts: ``registry.upstream_projects`` is keyed by ``distribution`` (the PyPI
    name). Another project for a distribution another plugin has is a conflict; the
    later-registered plugin is refused.

    Errors: a malformed record or a hook that raises refuses the plugin.
    """
