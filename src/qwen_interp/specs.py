"""Typed records that plugins register. Plain frozen dataclasses: easy to compare and to print."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint on the Hub and the public facts of its ``config.json``.

    The facts let tests build small stand-ins with the same architecture flags and let loaders
    check that a dictionary (CLT, SAE) belongs to this model before allocating anything.
    """

    repo_id: str
    architecture: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    tied_embeddings: bool
    aliases: tuple[str, ...] = ()
    vocab_size: int = 151936
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    # Mixture of experts (0 for dense models).
    n_experts: int = 0
    experts_per_token: int = 0
    d_expert_mlp: int = 0


@dataclass(frozen=True)
class HookPoint:
    """One place in the network, named in each ecosystem. ``{layer}`` is filled in.

    ``hf_module`` is a dotted module path in the HF model; ``hf_port`` says whether the value is
    that module's ``input`` (first positional argument) or ``output`` (first element if a tuple).
    ``nnsight`` is an envoy location in circuit-tracer's syntax, read at ``nnsight_port``.
    """

    tl: str
    hf_module: str
    hf_port: str  # "input" | "output"
    bridge: str | None = None
    nnsight: str | None = None
    nnsight_port: str | None = None  # defaults to hf_port
    tl_aliases: tuple[str, ...] = ()  # other TL names of the same value (e.g. circuit-tracer's)


@dataclass(frozen=True)
class HookNameMap:
    """Hook points of one architecture, keyed by a short, ecosystem-neutral name."""

    architecture: str
    points: dict[str, HookPoint] = field(default_factory=dict)

    def point(self, name: str) -> HookPoint:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"{self.architecture} has no hook point {name!r}; "
                           f"known: {sorted(self.points)}") from None


@dataclass(frozen=True)
class ModelFamily:
    """One model architecture: the one record every adapter asks about it.

    ``architecture`` is ``config.json``'s ``architectures[0]`` (e.g. ``Qwen3ForCausalLM``);
    ``hf_config_class`` the ``transformers`` config class that reads it. ``hook_names`` names its
    hook points in every ecosystem. ``capabilities`` say what the adapters may do with it (see
    ``CAPABILITIES``). ``stand_in(spec, n_layers=...)`` returns a small ``transformers`` config
    (an instance of ``hf_config_class``) with the spec's architecture flags and ``n_layers``
    layers (the recipe chooses the default), from which the offline test hub builds a
    random-weight ``AutoModelForCausalLM`` stand-in; it is called only when a stand-in is built,
    so it may import ``transformers`` then. The recipe is the plugin's: see docs/cookbook.md.
    """

    architecture: str
    hf_config_class: str
    hook_names: HookNameMap
    capabilities: frozenset[str] = frozenset()
    stand_in: Callable[..., Any] | None = None


# What a model family can declare; adapters act on a family only for the capabilities it has.
HOOKED_TRANSFORMER = "hooked_transformer"  # TransformerLens HookedTransformer loads it
TL_FAST_LOAD = "tl_fast_load"  # qwen-interp's safetensors loader for HookedTransformer applies
TL_FAST_FORWARD = "tl_fast_forward"  # qwen-interp's faster Qwen3 forward applies
TL_MOE = "tl_moe"  # qwen-interp adds HookedTransformer's MoE config branch and weights
CAPABILITIES = (HOOKED_TRANSFORMER, TL_FAST_LOAD, TL_FAST_FORWARD, TL_MOE)


@dataclass(frozen=True)
class Command:
    """A ``qwen-interp`` subcommand: ``configure(parser)`` adds its arguments to an argparse
    subparser; ``run(args)`` does the work and returns the exit code."""

    name: str
    help: str
    configure: Callable[[Any], None]
    run: Callable[[Any], int]


@dataclass(frozen=True)
class DoctorCheck:
    """A check ``qwen-interp doctor`` runs: ``run()`` returns the problems it found, one line
    each (an empty list: all is well). Any problem makes doctor exit non-zero."""

    name: str
    run: Callable[[], list[str]]


@dataclass(frozen=True)
class TranscoderRelease:
    """A published cross-layer transcoder (CLT) and the model it was trained on."""

    repo_id: str
    model_repo_id: str
    n_layers: int
    d_latent: int
    feature_input_hook: str  # TransformerLens / circuit-tracer hook name inside a block
    feature_output_hook: str
    aliases: tuple[str, ...] = ()
    layout: str = "hub"


@dataclass(frozen=True)
class TranscoderFormat:
    """A way of storing transcoders on disk: ``detect(path)`` says whether a folder holds it,
    ``load(path, **kwargs)`` returns a circuit-tracer transcoder."""

    name: str
    detect: Callable[[Any], bool]
    load: Callable[..., Any]


@dataclass(frozen=True)
class SAERelease:
    """A published family of sparse autoencoders, one per layer."""

    release: str  # SAELens release name
    repo_id: str
    model_repo_id: str
    d_model: int
    d_sae: int
    k: int
    n_layers: int
    hook_point: str = "resid_post"  # key into the architecture's HookNameMap
    file_template: str = "layer{layer}.sae.pt"


@runtime_checkable
class Adapter(Protocol):
    """Bridges one upstream package. Activated once that package is imported.

    ``activate`` must record everything it changes so that ``deactivate`` restores upstream
    exactly; it must change nothing that upstream already does right (stand down).
    """

    name: str
    module: str  # the upstream top-level module that triggers activation

    def activate(self, registry: Any) -> None: ...

    def deactivate(self) -> None: ...

    def status(self) -> list[str]: ...
