"""Adapter: circuit-tracer attribution with bounded GPU memory (``active_decoders.py``).

After ``import qwen_interp``, ``attribute()`` on a cross-layer transcoder (either backend) keeps
each active feature's decoder rows once and scores them in bounded blocks instead of building
circuit-tracer's per-occurrence ``decoder_vecs`` and its (batch, occurrences, d_model) gather,
and ranks features without copying the whole edge matrix to the device
(``bounded_influences.py``), and keeps one attention pattern per layer in the forward pass
(``shared_patterns.py``). Those three modules are torch-only and are shipped unchanged by the
circuit-tracer patch ``bounded-attribution-memory``. The graph is the same (tests/test_attribution_memory.py);
per-layer transcoders keep upstream's scoring.

Only attribute()'s own calls take these paths: ``compute_attribution_components`` and
``run_forward_pass`` called directly return and do exactly what upstream's do. Nothing here is
specific to Qwen: the decoder rows, their scores and the ranking are the same arithmetic for any
cross-layer transcoder (the reconstruction is upstream's bit for bit), and the shared pattern is
used only for TransformerLens's own attention classes (rows are one prompt repeated and the
pattern is detached in every attribution forward pass), so it applies to every model.

Settings: ``QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB`` (default 256) bounds the scratch block of each
scoring and reconstruction step; ``QWEN_INTERP_BOUNDED_ATTRIBUTION=0`` selects upstream's path.
Stands down when circuit-tracer ships ``circuit_tracer.attribution.active_decoders`` (the patch).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os

from qwen_interp import import_watch
from qwen_interp.patching import PatchSet

from . import bounded_influences
from .active_decoders import (DEFAULT_WORKSPACE_BYTES, ActiveDecoders, attribution_components,
                              scoring_hooks)
from .shared_patterns import shared_attention_patterns

ENV = "QWEN_INTERP_BOUNDED_ATTRIBUTION"
ENV_WORKSPACE_MB = "QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB"
CLT_MODULE = "circuit_tracer.transcoder.cross_layer_transcoder"
TL_CONTEXT = "circuit_tracer.attribution.context_transformerlens"
NNSIGHT_CONTEXT = "circuit_tracer.attribution.context_nnsight"
ATTRIBUTE = "circuit_tracer.attribution.attribute"
TL_MODEL = "circuit_tracer.replacement_model.replacement_model_transformerlens"
UPSTREAM_MODULE = "circuit_tracer.attribution.active_decoders"


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def workspace_bytes() -> int:
    raw = os.environ.get(ENV_WORKSPACE_MB)
    if raw is None:
        return DEFAULT_WORKSPACE_BYTES
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_WORKSPACE_MB}={raw!r}: expected a number of MB") from None
    if mb <= 0:
        raise ValueError(f"{ENV_WORKSPACE_MB}={raw!r}: must be > 0")
    return int(mb * 2**20)


def bounded_components(original):
    """CrossLayerTranscoder.compute_attribution_components: upstream's method and return value,
    except for the call attribute() makes itself (its context and hooks are internal to it),
    which gets ActiveDecoders. Direct callers keep upstream's tensors and contract."""
    @functools.wraps(original)
    def compute_attribution_components(self, inputs, zero_positions=slice(0, 1)):
        call = _CALL.get()
        if not enabled() or "offload" not in call:
            return original(self, inputs, zero_positions)
        # Encoder rows can be looked up in the transcoder unless attribute() offloads it.
        return attribution_components(self, inputs, zero_positions, workspace_bytes(),
                                      lookup_encoders=call["offload"] is None)
    compute_attribution_components.__qwen_interp_original__ = original
    return compute_attribution_components


def tl_hooks(original):
    """TL AttributionContext._make_attribution_hooks plus one scoring hook per output layer."""
    @functools.wraps(original)
    def _make_attribution_hooks(self, feature_output_hook):
        hooks = original(self, feature_output_hook)
        if isinstance(self.decoder_vecs, ActiveDecoders):
            hooks = scoring_hooks(self, feature_output_hook) + hooks
        return hooks
    _make_attribution_hooks.__qwen_interp_original__ = original
    return _make_attribution_hooks


def nnsight_feature_scores(original):
    @functools.wraps(original)
    def compute_feature_attributions(self, layer, grads):
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
        with shared_attention_patterns(self.blocks):
            return original(self, input_ids, batch_size, ctx)
    run_forward_pass.__qwen_interp_original__ = original
    return run_forward_pass


# State of the attribute() call in progress: its ``offload`` argument, and the row sums of its
# edge matrix (rows are final once ranked, so each is summed once per call, not per update).
_CALL: contextvars.ContextVar[dict] = contextvars.ContextVar("attribute_call", default={})


def bounded_influences_fn(original):
    """The influence ranking of attribute(): no device copy of the whole edge matrix."""
    @functools.wraps(original)
    def compute_partial_influences(edge_matrix, logit_p, row_to_node_index, max_iter=128,
                                   device=None):
        if not enabled():
            return original(edge_matrix, logit_p, row_to_node_index, max_iter, device)
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


class BoundedAttributionAdapter:
    name = "circuit_tracer_attribution"
    module = "circuit_tracer"

    def __init__(self) -> None:
        self._patches = PatchSet()
        self.active = False
        self.report: list[str] = []

    def activate(self, registry) -> None:
        if self.active:
            return
        self.active = True
        self.report = []
        for modname, patch in ((CLT_MODULE, self._patch_clt), (TL_CONTEXT, self._patch_tl),
                               (NNSIGHT_CONTEXT, self._patch_nnsight),
                               (ATTRIBUTE, self._patch_attribute),
                               (TL_MODEL, self._patch_tl_model)):
            import_watch.when_imported(modname, self._guard(functools.partial(patch, modname)))

    def _guard(self, fn):
        def run():
            if self.active:
                fn()
        return run

    @staticmethod
    def _upstream_has_it() -> bool:
        return importlib.util.find_spec(UPSTREAM_MODULE) is not None

    def _patch_clt(self, modname: str) -> None:
        if self._upstream_has_it():
            self.report.append("bounded attribution memory: already upstream "
                               f"({UPSTREAM_MODULE}); stood down")
            return
        import importlib
        cls = importlib.import_module(modname).CrossLayerTranscoder
        self._patches.setattr(cls, "compute_attribution_components", bounded_components(
            cls.__dict__["compute_attribution_components"]))
        self.report.append("CrossLayerTranscoder.compute_attribution_components: active decoder "
                           "rows read once, scored in bounded blocks "
                           f"({ENV_WORKSPACE_MB}, {ENV}=0 for upstream)")

    def _patch_tl(self, modname: str) -> None:
        if self._upstream_has_it():
            return
        import importlib
        cls = importlib.import_module(modname).AttributionContext
        self._patches.setattr(cls, "_make_attribution_hooks",
                              tl_hooks(cls.__dict__["_make_attribution_hooks"]))

    def _patch_nnsight(self, modname: str) -> None:
        if self._upstream_has_it():
            return
        import importlib
        cls = importlib.import_module(modname).AttributionContext
        self._patches.setattr(cls, "compute_feature_attributions", nnsight_feature_scores(
            cls.__dict__["compute_feature_attributions"]))

    def _patch_attribute(self, modname: str) -> None:
        if self._upstream_has_it():
            return
        import importlib
        mod = importlib.import_module(modname)
        self._patches.setattr(mod, "compute_partial_influences",
                              bounded_influences_fn(mod.compute_partial_influences))
        self._patches.setattr(mod, "_run_attribution", per_call_state(mod._run_attribution))
        self.report.append("attribute(): influence ranking without a device copy of the whole "
                           "edge matrix")

    def _patch_tl_model(self, modname: str) -> None:
        if self._upstream_has_it():
            return
        import importlib
        cls = importlib.import_module(modname).TransformerLensReplacementModel
        self._patches.setattr(cls, "run_forward_pass",
                              tl_forward_pass(cls.__dict__["run_forward_pass"]))
        self.report.append("TransformerLens backend: one attention pattern per layer in "
                           "attribution's forward pass, not one per batch row")

    def deactivate(self) -> None:
        self._patches.undo()
        self.active = False
        self.report = []

    def status(self) -> list[str]:
        return list(self.report) if self.active else ["not active (circuit_tracer not imported)"]
