"""Built-in plugin: BluelightAI cross-layer transcoders (CLTs) in circuit-tracer.

- Releases: ``bluelightai/clt-qwen3-{0.6b,1.7b}-base-20k`` (aliases ``bluelight-qwen3-0.6b``,
  ``bluelight-qwen3-1.7b``), loadable by ``ReplacementModel.from_pretrained(model, release)`` on
  both backends, from the Hub or an offline cache, with or without ``config.yaml``.
- Formats: ``circuit_tracer_hub`` and ``bluelight_native`` (``formats.py``, ``native.py``);
  native checkpoints are converted once into ``$QWEN_INTERP_CACHE/clt`` (default
  ``~/.cache/qwen-interp/clt``; ``cache.py``).
- Validation before any allocation (``validate.py``): one :class:`TranscoderValidationError`
  naming the file and tensor.
- Attribution with bounded GPU memory (``attribution.py``, ``active_decoders.py``).
- Top-k CLTs in attribution (``topk.py``); the adapter (``adapter.py``) documents the nnsight
  hook points and the first-position decision for Qwen (no BOS).
"""

from __future__ import annotations

from qwen_interp import hookimpl
from qwen_interp.compat import KnownBad, known_bad_check
from qwen_interp.specs import TranscoderRelease

from .adapter import CircuitTracerAdapter, preflight
from .attribution import BoundedAttributionAdapter
from .errors import TranscoderValidationError

__all__ = ["BLUELIGHT_RELEASES", "BoundedAttributionAdapter", "CircuitTracerAdapter",
           "TranscoderValidationError", "preflight"]

# Hook points: the encoder reads the MLP input after the pre-MLP RMSNorm *with* its gain, the
# decoder writes the MLP output (BluelightAI's config.yaml; see docs/formats.md).
BLUELIGHT_RELEASES = (
    TranscoderRelease("bluelightai/clt-qwen3-0.6b-base-20k", "Qwen/Qwen3-0.6B-Base", n_layers=28,
                      d_latent=20480, feature_input_hook="mlp.hook_in",
                      feature_output_hook="mlp.hook_out", aliases=("bluelight-qwen3-0.6b",)),
    TranscoderRelease("bluelightai/clt-qwen3-1.7b-base-20k", "Qwen/Qwen3-1.7B-Base", n_layers=28,
                      d_latent=20480, feature_input_hook="mlp.hook_in",
                      feature_output_hook="mlp.hook_out", aliases=("bluelight-qwen3-1.7b",)),
)

_ADAPTER = CircuitTracerAdapter()
_ATTRIBUTION = BoundedAttributionAdapter()


@hookimpl
def register_transcoder_releases(register):
    for release in BLUELIGHT_RELEASES:
        register(release)


@hookimpl
def register_transcoder_formats(register):
    # Imported here: formats.py imports yaml only, circuit-tracer lazily.
    from .formats import FORMATS
    for fmt in FORMATS:
        register(fmt)


@hookimpl
def register_adapters(register):
    register(_ADAPTER)
    register(_ATTRIBUTION)


@hookimpl
def register_upstream_patches(register):
    # The same changes as upstream-ready source patches (`qwen-interp patches`).
    from .upstream_patches import PROJECT
    register(PROJECT)


# Known-bad releases of what circuit-tracer 0.5 runs on, reported by `qwen-interp doctor`.
KNOWN_BAD = (
    KnownBad("nnsight", ">=0.7", "removed nnsight.intervention.tracing: circuit-tracer's nnsight "
             "backend does not import; use 0.6.1"),
    KnownBad("huggingface-hub", ">=1.0", "circuit-tracer 0.5 and transformers 4.57 need < 1.0",
             only_with="circuit-tracer"),
)


@hookimpl
def register_doctor_checks(register):
    register(known_bad_check("circuit_tracer-versions", KNOWN_BAD))
