"""Adapter: circuit-tracer attribution with bounded GPU memory (``active_decoders.py``).

After ``import qwen_interp``, ``attribute()`` on a cross-layer transcoder (either backend) keeps
each active feature's decoder rows once and scores them in bounded blocks instead of building
circuit-tracer's per-occurrence ``decoder_vecs`` and its (batch, occurrences, d_model) gather,
and ranks features without copying the whole edge matrix to the device
(``bounded_influences.py``), and keeps one attention pattern per layer in the forward pass
(``shared_patterns.py``). Those three modules are torch-only and are shipped unchanged by the
circuit-tracer patch ``bounded-attribution-memory``. The graph is the same
(tests/test_attribution_memory.py); per-layer transcoders keep upstream's scoring.

Only attribute()'s own calls take these paths: ``compute_attribution_components`` and
``run_forward_pass`` called directly return and do exactly what upstream's do. Nothing here is
specific to Qwen: the decoder rows, their scores and the ranking are the same arithmetic for any
cross-layer transcoder (the reconstruction is upstream's bit for bit), and the shared pattern is
used only for TransformerLens's own attention classes (rows are one prompt repeated and the
pattern is detached in every attribution forward pass), so it applies to every model.

Settings: ``QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB`` (default 256) bounds the scratch block of each
scoring and reconstruction step; ``QWEN_INTERP_BOUNDED_ATTRIBUTION=0`` selects upstream's path.
Every part stands down (state ``upstream``) when circuit-tracer ships
``circuit_tracer.attribution.active_decoders`` (the patch).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import types
from collections.abc import Mapping
from typing import Any

from qwen_interp import settings
from qwen_interp.adapters import AdapterBase, AlreadyUpstream, Part
from qwen_interp.patching import PatchSet

# The torch-side modules (active_decoders, bounded_influences, shared_patterns) are imported
# inside the wrappers: they run in attribute() only, and `import qwen_interp` must not import
# torch (a second of every interpreter start, and the CLI's).

ENV = settings.BOUNDED_ATTRIBUTION.name
ENV_WORKSPACE_MB = settings.ATTRIBUTION_WORKSPACE_MB.name
CLT_MODULE = "circuit_tracer.transcoder.cross_layer_transcoder"
TL_CONTEXT = "circuit_tracer.attribution.context_transformerlens"
NNSIGHT_CONTEXT = "circuit_tracer.attribution.context_nnsight"
ATTRIBUTE = "circuit_tracer.attribution.attribute"
TL_MODEL = "circuit_tracer.replacement_model.replacement_model_transformerlens"
UPSTREAM_MODULE = "circuit_tracer.attribution.active_decoders"


def enabled() -> bool:
    return settings.BOUNDED_ATTRIBUTION.get()


def workspace_bytes() -> int:
    if not settings.ATTRIBUTION_WORKSPACE_MB.is_set():
        from .active_decoders import DEFAULT_WORKSPACE_BYTES
        return DEFAULT_WORKSPACE_BYTES
    return max(1, int(settings.ATTRIBUTION_WORKSPACE_MB.get() * 2**20))


def bounded_components(original):
    """CrossLayerTranscoder.compute_attribution_components: upstream's method and return value,
    except for the call attribute() makes itself (its context and hooks are internal to it),
    which gets ActiveDecoders. Direct callers keep upstream's tensors and contract."""
    @functools.wraps(original)
    def compute_attribution_components(self, inputs, zero_positions=slice(0, 1)):
        call = _CALL.get()
        if not enabled() or "offload" not in call:
            return original(self, inputs, zero_positions)
        from .active_decoders import attribution_components
        # Encoder rows can be looked up in the transcoder unless attribute() offloads it.
        return attribution_components(self, inputs, zero_positions, workspace_bytes(),
                                      lookup_encoders=call["offload"] is None)
    compute_attribution_components.__qwen_interp_original__ = original
    return compute_attribution_components


def tl_hooks(original):
    """TL AttributionContext._make_attribution_hooks plus one scoring hook per output layer."""
    @functools.wraps(original)
    def _make_attribution_hooks(self, feature_output_hook):
        from .active_decoders import ActiveDecoders, scoring_hooks
        hooks = original(self, feature_output_hook)
        if isinstance(self.decoder_vecs, ActiveDecoders):
            hooks = scoring_hooks(self, feature_output_hook) + hooks
        return hooks
    _make_attribution_hooks.__qwen_interp_original__ = original
    return _make_attribution_hooks


def nnsight_feature_scores(original):
    @functools.wraps(original)
    def compute_feature_attributions(self, layer, grads):
        from .active_decoders import ActiveDecoders
        if isinstance(self.decoder_vecs, ActiveDecoders):
            self.decoder_vecs.score_into(self._batch_buffer, grads, layer)
        else:
            original(self, layer, grads)
    compute_feature_attributions.__qwen_interp_original__ = original
    return compute_feature_attributions


def tl_forward_pass(original):
    """TL ReplacementModel.run_forward_pass with shared_pattern_z in every attention layer."""
    @functools.wraps(original)
    def run_forward_pass(self, input_ids, batch_size, ctx):
        if not enabled() or "offload" not in _CALL.get():  # only attribute()'s own pass
            return original(self, input_ids, batch_size, ctx)
        from .shared_patterns import shared_attention_patterns
        with shared_attention_patterns(self.blocks):
            return original(self, input_ids, batch_size, ctx)
    run_forward_pass.__qwen_interp_original__ = original
    return run_forward_pass


# State of the attribute() call in progress: its ``offload`` argument, and the row sums of its
# edge matrix (rows are final once ranked, so each is summed once per call, not per update).
# Outside a call: an empty, read-only mapping.
_CALL: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "attribute_call", default=types.MappingProxyType({}))


def bounded_influences_fn(original):
    """The influence ranking of attribute(): no device copy of the whole edge matrix."""
    @functools.wraps(original)
    def compute_partial_influences(edge_matrix, logit_p, row_to_node_index, max_iter=128,
                                   device=None):
        if not enabled():
            return original(edge_matrix, logit_p, row_to_node_index, max_iter, device)
        from . import bounded_influences
        return bounded_influences.compute_partial_influences(
            edge_matrix, logit_p, row_to_node_index, max_iter, device, workspace_bytes(),
            row_sum_cache=_CALL.get().get("row_sums"))
    compute_partial_influences.__qwen_interp_original__ = original
    return compute_partial_influences


@contextlib.contextmanager
def attribute_call(offload=None):
    """The state attribute() sets for its own steps (``per_call_state``); also lets a test run
    one of those steps, e.g. ``setup_attribution``, as attribute() does."""
    token = _CALL.set({"offload": offload, "row_sums": {}})
    try:
        yield
    finally:
        _CALL.reset(token)


def per_call_state(original):
    """attribute()'s ``_run_attribution`` with its offload setting and a fresh row-sum cache
    visible to the patched steps (attribute() passes every argument by keyword). Their presence
    is also what selects the bounded transcoder components: only attribute() consumes them."""
    @functools.wraps(original)
    def _run_attribution(*args, **kwargs):
        with attribute_call(kwargs.get("offload", "unknown")):
            return original(*args, **kwargs)
    _run_attribution.__qwen_interp_original__ = original
    return _run_attribution


def upstream_has_it() -> bool:
    return importlib.util.find_spec(UPSTREAM_MODULE) is not None


def _unless_upstream(apply):
    """A part's apply that stands down when circuit-tracer ships the bounded path itself."""
    @functools.wraps(apply)
    def run(patches: PatchSet, registry) -> str:
        if upstream_has_it():
            raise AlreadyUpstream(f"{UPSTREAM_MODULE}; stood down")
        return apply(patches)
    return run


def _patch_clt(patches: PatchSet) -> str:
    cls = importlib.import_module(CLT_MODULE).CrossLayerTranscoder
    patches.wrap(cls, "compute_attribution_components", bounded_components)
    return f"{ENV_WORKSPACE_MB} bounds each block; {ENV}=0 for upstream's path"


def _patch_tl_context(patches: PatchSet) -> str:
    cls = importlib.import_module(TL_CONTEXT).AttributionContext
    patches.wrap(cls, "_make_attribution_hooks", tl_hooks)
    return ""


def _patch_nnsight_context(patches: PatchSet) -> str:
    cls = importlib.import_module(NNSIGHT_CONTEXT).AttributionContext
    patches.wrap(cls, "compute_feature_attributions", nnsight_feature_scores)
    return ""


def _patch_influences(patches: PatchSet) -> str:
    patches.wrap(importlib.import_module(ATTRIBUTE), "compute_partial_influences",
                 bounded_influences_fn)
    return ""


def _patch_call_state(patches: PatchSet) -> str:
    patches.wrap(importlib.import_module(ATTRIBUTE), "_run_attribution", per_call_state)
    return ""


def _patch_tl_forward(patches: PatchSet) -> str:
    cls = importlib.import_module(TL_MODEL).TransformerLensReplacementModel
    patches.wrap(cls, "run_forward_pass", tl_forward_pass)
    return ""


# (part, upstream module, what it changes, apply)
PARTS = (
    ("bounded-components", CLT_MODULE,
     ("CrossLayerTranscoder.compute_attribution_components, in attribute(): active decoder rows "
      "read once, scored in bounded blocks"), _patch_clt),
    ("scoring-hooks:transformerlens", TL_CONTEXT,
     "AttributionContext._make_attribution_hooks: one scoring hook per output layer",
     _patch_tl_context),
    ("scoring:nnsight", NNSIGHT_CONTEXT,
     "AttributionContext.compute_feature_attributions: scores from the active rows",
     _patch_nnsight_context),
    ("influence-ranking", ATTRIBUTE,
     "compute_partial_influences, in attribute(): no device copy of the whole edge matrix",
     _patch_influences),
    ("attribute-call", ATTRIBUTE,
     ("_run_attribution: its offload setting and a row-sum cache, visible to the steps above "
      "(what selects them)"), _patch_call_state),
    ("shared-attention-pattern", TL_MODEL,
     ("TransformerLensReplacementModel.run_forward_pass, in attribute(): one attention pattern "
      "per layer, not one per batch row"), _patch_tl_forward),
)


class BoundedAttributionAdapter(AdapterBase):
    name = "circuit_tracer_attribution"
    module = "circuit_tracer"

    def parts(self) -> list[Part]:
        return [Part(name, module, changes, _unless_upstream(apply))
                for name, module, changes, apply in PARTS]
