"""Interventions on feature groups and batched strength sweeps, read off the next-token
distribution (BluelightAI's way of testing a circuit story: ablate a group, scale it, steer it
down, clamp it).

**CLT features: circuit-tracer's semantics.** An :class:`Intervention` ``(group, mode,
strength)`` becomes circuit-tracer ``(layer, position, feature, value)`` tuples that *set* each
node's activation to ``value`` (:meth:`Intervention.clt_tuples`), computed from the clean run:

- ``ablate``: 0; ``scale`` s: ``s * clean`` (s < 0 is BluelightAI's "steer down", s = 1 changes
  nothing); ``clamp`` v: ``v``; ``add`` v: ``clean + v``.

What ``ReplacementModel.feature_intervention(tokens, tuples)`` does with them, with its defaults
``constrained_layers=None, freeze_attention=True, apply_activation_function=True``
(circuit-tracer 0.5.0 as installed from PyPI, ``replacement_model_transformerlens.py``):

1. A clean run (``setup_intervention_with_freeze``, l. 445-536) caches every layer's attention
   pattern (``hook_pattern`` only: norm scales are frozen only with ``constrained_layers``
   covering all layers, MLP outputs only with ``constrained_layers``, l. 462-468).
2. The intervened run replaces each pattern with its clean value (``freeze_hook``, l. 490). At
   each layer's ``mlp.hook_in`` the CLT re-encodes the *current* MLP input (post activation
   function, position 0 zeroed: ``_get_activation_caching_hooks``, l. 283-301). At that layer's
   ``mlp.hook_out`` (its ``hook_out_grad`` point), ``calculate_delta_hook`` (l. 618-659) takes
   ``delta = value - current`` for each tuple of the layer (the last tuple wins for a repeated
   (position, feature)) and adds ``delta * W_dec[layer][feature, m - layer]`` to the pending
   output edit of every layer ``m >= layer`` at that position; ``intervention_hook``
   (l. 661-666) adds the pending edit to the real MLP output of each layer.
3. So the real model keeps running: downstream features are not set, they (and everything else)
   follow from the edited residual stream through the real MLPs, norms and attention values;
   an edit at a later layer is sized against the activation the earlier edits produced.
   The activations it returns are those re-encoded from each layer's MLP input, so at an edited
   node they are not ``value`` (the edit is on the output side). Position 0 (the
   ``<|endoftext|>`` circuit-tracer puts first) has its features zeroed: refused here.

Refused with one ValueError naming every bad node: position 0 or out of range, layer or feature
out of range, no SAE for a node, and ``ablate``/``scale`` of a feature inactive there (a silent
no-op; ``clamp``/``add`` may turn one on). A node's position None means every position (from 1
for the CLT, as the Explorer's steering).

circuit-tracer's hooks hold one prompt (``layer_deltas`` has no batch axis, the encoder output is
``squeeze(0)``-ed and position-indexed), so :func:`evaluate`/:func:`sweep` implement the same
hooks for a batch in which each row carries its own edits: one clean run (activations, patterns,
the unsteered row), then every setting in one batched run (split only when the device runs out
of memory). tests/test_study_interventions.py checks each row against ``feature_intervention``.

**SAE features: Qwen-Scope's convention** (docs/formats.md), at the SAE's layer output
(``blocks.{n}.hook_resid_post``), at the node's position (all positions when it is None), through
``qwen_interp_saelens.steering``'s hook: ``add`` v is ``h += v * W_dec[f]`` (its ``steer``);
``ablate``/``scale``/``clamp`` set the SAE activation keeping the SAE error, ``h += (target -
a_f(h)) * W_dec[f]`` (its ``clamp``; ``ablate`` is its ``suppress``), with target 0,
``s * clean`` or v. SAE edits are active for the whole call, including the run whose attention
patterns CLT edits freeze (as ``feature_intervention`` inside ``Session.steer``).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

MODES = ("ablate", "scale", "clamp", "add")
CLT = "clt"
# Modes that only rescale what is there: on an inactive feature they would silently do nothing.
NEEDS_ACTIVE = ("ablate", "scale")


# --- what to do -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Intervention:
    """Set every node of ``group`` (any object with ``.name`` and ``.nodes``; a node has
    ``.layer``, ``.position``, ``.feature``, ``.dictionary``) by ``mode`` and ``strength``."""

    group: Any
    mode: str = "ablate"
    strength: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown intervention mode {self.mode!r}; expected one of "
                             f"{', '.join(MODES)}")
        try:
            strength = float(self.strength)
        except (TypeError, ValueError):
            raise ValueError(f"intervention strength must be a number, got "
                             f"{self.strength!r}") from None
        if not math.isfinite(strength):
            raise ValueError(f"intervention strength must be finite, got {self.strength!r}")
        object.__setattr__(self, "strength", strength)
        name, nodes = getattr(self.group, "name", None), getattr(self.group, "nodes", None)
        if not isinstance(name, str) or nodes is None or not len(nodes):
            raise ValueError(f"an intervention needs a group with a name and at least one node, "
                             f"got {self.group!r:.80}")

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def label(self) -> str:
        return "ablate" if self.mode == "ablate" else f"{self.mode} {self.strength:g}"

    def value(self, clean: float) -> float:
        """The value a node with clean activation ``clean`` is set to."""
        if self.mode == "ablate":
            return 0.0
        if self.mode == "scale":
            return self.strength * clean
        if self.mode == "clamp":
            return self.strength
        return clean + self.strength  # add

    def clt_tuples(self, clean: CleanRun) -> list[tuple[int, int, int, float]]:
        """circuit-tracer's ``(layer, position, feature, value)`` for the group's CLT nodes
        (checked first; one ValueError lists every bad node)."""
        clean.check([self])
        return self._clt_tuples(clean)

    def _clt_tuples(self, clean: CleanRun) -> list[tuple[int, int, int, float]]:
        out = []
        for node in self.group.nodes:
            if _is_clt(node):
                for pos in clean.positions(node):
                    act = float(clean.clt[node.layer, pos, node.feature])
                    out.append((int(node.layer), pos, int(node.feature), self.value(act)))
        return out

    def sae_edits(self, clean: CleanRun) -> list[SAEEdit]:
        """The group's SAE nodes as edits at each node's position (all when it is None)."""
        clean.check([self])
        return self._sae_edits(clean)

    def _sae_edits(self, clean: CleanRun) -> list[SAEEdit]:
        out = []
        for node in self.group.nodes:
            if _is_clt(node):
                continue
            sae = clean.sae_of(node)
            for pos in clean.positions(node):
                act = float(clean.sae_acts[id(sae)][pos, node.feature])
                value = self.strength if self.mode == "add" else self.value(act)
                out.append(SAEEdit(sae, pos, int(node.feature), self.mode == "add", value))
        return out


@dataclass(frozen=True)
class SAEEdit:
    sae: Any
    position: int
    feature: int
    add: bool  # True: h += value * W_dec[f]; False: set a_f(h) to value (SAE error kept)
    value: float


def _is_clt(node) -> bool:
    return getattr(node, "dictionary", CLT) == CLT


def _describe(node) -> str:
    dictionary = getattr(node, "dictionary", CLT)
    pos = "all positions" if node.position is None else f"position {node.position}"
    return f"{dictionary} node L{node.layer} feature {node.feature} at {pos}"


# --- the clean run ------------------------------------------------------------------------------
@dataclass
class CleanRun:
    """The prompt's clean pass: what values are computed from, patterns are frozen to, and the
    unsteered row is read from."""

    model: Any  # circuit-tracer's TransformerLens ReplacementModel
    tokens: torch.Tensor  # (1, n_pos), position 0 the special token circuit-tracer prepends
    logits: torch.Tensor  # (d_vocab,) at the last position
    clt: torch.Tensor  # (n_layers, n_pos, d_latent), position 0 zeroed (circuit-tracer's rule)
    patterns: list[torch.Tensor]  # per layer (1, n_heads, n_pos, n_pos)
    saes: Mapping[Any, Any] = field(default_factory=dict)  # dictionary id or layer -> SAE
    sae_acts: dict[int, torch.Tensor] = field(default_factory=dict)  # id(SAE) -> (n_pos, d_sae)

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[-1])

    def positions(self, node) -> list[int]:
        if node.position is not None:
            return [int(node.position)]
        # circuit-tracer edits every position after the special token; Qwen-Scope every one
        return list(range(1 if _is_clt(node) else 0, self.n_pos))

    def sae_of(self, node):
        sae = self.saes.get(node.dictionary)
        return sae if sae is not None else self.saes.get(node.layer)

    def check(self, interventions: Iterable[Intervention]) -> None:
        """One ValueError naming every bad node and what was expected; nothing when all fit."""
        problems = []
        for iv in interventions:
            for node in iv.group.nodes:
                why = self._problem(node, iv.mode)
                if why:
                    problems.append(f"group {iv.name!r} ({iv.label}): {_describe(node)}: {why}")
        if problems:
            raise ValueError(f"{len(problems)} bad intervention node(s):\n  "
                             + "\n  ".join(problems))

    def _problem(self, node, mode: str) -> str | None:
        for attr in ("layer", "feature"):
            value = getattr(node, attr, None)
            if not _is_int(value) or value is None or value < 0:
                return f"{attr} must be a non-negative integer, got {value!r}"
        pos = node.position
        if pos is not None and not _is_int(pos):
            return f"position must be an integer or None, got {pos!r}"
        if pos == 0:
            return ("position 0 is the <|endoftext|> circuit-tracer prepends (its features are "
                    f"zeroed); the prompt's tokens are positions 1..{self.n_pos - 1}")
        if pos is not None and not 0 < pos < self.n_pos:
            return (f"position out of range: the prompt has positions 1..{self.n_pos - 1} "
                    "(0 is the prepended <|endoftext|>)")
        if _is_clt(node):
            n_layers, width = self.clt.shape[0], self.clt.shape[-1]
            if node.layer >= n_layers:
                return f"layer out of range: the CLT has layers 0..{n_layers - 1}"
            if node.feature >= width:
                return f"feature out of range: the CLT has features 0..{width - 1} per layer"
            acts = self.clt[node.layer, self.positions(node), node.feature]
        else:
            sae = self.sae_of(node)
            if sae is None:
                return (f"no SAE attached for dictionary {node.dictionary!r} or layer "
                        f"{node.layer} (attached: {sorted(map(str, self.saes))})")
            layer = _sae_layer(sae)
            if layer != node.layer:
                return f"the SAE for {node.dictionary!r} reads layer {layer}, not {node.layer}"
            width = int(sae.cfg.d_sae)
            if node.feature >= width:
                return f"feature out of range: the SAE has features 0..{width - 1}"
            acts = self.sae_acts[id(sae)][self.positions(node), node.feature]
        if mode in NEEDS_ACTIVE and not bool((acts != 0).any()):
            return (f"the feature is not active there on this prompt (clean activation 0), so "
                    f"{mode} would change nothing; expected an active feature (clamp or add can "
                    "turn an inactive one on)")
        return None


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _sae_layer(sae) -> int:
    from qwen_interp.apps.session import _layer_of
    return _layer_of(sae.cfg.metadata.hook_name)


def _replacement_model(model):
    """The TransformerLens ReplacementModel of a Session or itself."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "transcoders") or not hasattr(inner, "feature_output_hook"):
        raise ValueError("interventions need circuit-tracer's TransformerLens ReplacementModel "
                         "with a CLT (or a Session with a CLT attached)")
    return inner


def _tokens(model, prompt) -> torch.Tensor:
    """(1, n_pos) as circuit-tracer tokenizes: ``<|endoftext|>`` first unless already special."""
    if isinstance(prompt, str):
        tokens = model.ensure_tokenized(prompt)
    else:
        tokens = torch.as_tensor(prompt, device=model.cfg.device)
    tokens = tokens.reshape(1, -1) if tokens.ndim <= 1 or tokens.shape[0] == 1 else tokens
    if tokens.shape[0] != 1:
        raise ValueError(f"one prompt at a time, got token ids of shape {tuple(tokens.shape)}")
    return tokens.to(model.cfg.device)


@torch.no_grad()
def clean_run(model, prompt, saes: Mapping[Any, Any] | None = None) -> CleanRun:
    """The clean pass with circuit-tracer's own caching hooks (those of
    ``setup_intervention_with_freeze``): CLT activations and attention patterns. ``saes``:
    ``{dictionary id or layer: SAE}``; by default a Session's attached SAEs (by layer)."""
    session = model
    model = _replacement_model(model)
    if saes is None:
        saes = dict(getattr(session, "saes", {}) or {})
    tokens = _tokens(model, prompt)
    patterns, pattern_hooks, _ = model.get_caching_hooks(
        names_filter=lambda name: name.endswith("attn.hook_pattern"))
    activations, activation_hooks = model._get_activation_caching_hooks()
    sae_acts: dict[int, torch.Tensor] = {}
    hooks = pattern_hooks + activation_hooks
    for sae in {id(s): s for s in saes.values()}.values():
        def encode(acts, hook, sae=sae):
            sae_acts[id(sae)] = sae.encode(acts.to(sae.W_enc.dtype))[0].detach()
        hooks.append((sae.cfg.metadata.hook_name, encode))
    with model.hooks(fwd_hooks=hooks):
        logits = _last_logits(model, tokens)[0]
    n_layers = model.cfg.n_layers
    return CleanRun(model=model, tokens=tokens, logits=logits, clt=torch.stack(activations),
                    patterns=[patterns[f"blocks.{layer}.attn.hook_pattern"]
                              for layer in range(n_layers)],
                    saes=saes, sae_acts=sae_acts)


def _last_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """(batch, d_vocab) logits at the last position; HookedTransformer's own tail (final norm,
    unembed, soft cap) applied to that position only, which is all a next-token read needs."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    logits = model.unembed(model.ln_final(resid[:, -1:]))[:, 0]
    cap = model.cfg.output_logits_soft_cap
    return cap * torch.tanh(logits / cap) if cap > 0.0 else logits


# --- the batched run ------------------------------------------------------------------------------
@dataclass
class _Row:
    clt: dict[int, dict[tuple[int, int], float]]  # layer -> {(pos, feature): value}
    sae: list[SAEEdit]


def _row(iv: Intervention, clean: CleanRun) -> _Row:
    """One setting's edits (already checked)."""
    clt: dict[int, dict[tuple[int, int], float]] = {}
    for layer, pos, feature, value in iv._clt_tuples(clean):
        clt.setdefault(layer, {})[(pos, feature)] = value  # circuit-tracer: the last one wins
    return _Row(clt, iv._sae_edits(clean))


def _sae_hooks(model, rows: list[_Row], stack: contextlib.ExitStack) -> None:
    """Each row's SAE edits through qwen_interp_saelens.steering's hook point."""
    from qwen_interp_saelens.steering import _edit_hook
    by_sae: dict[int, list[tuple[int, SAEEdit]]] = {}
    saes = {}
    for r, row in enumerate(rows):
        for edit in row.sae:
            by_sae.setdefault(id(edit.sae), []).append((r, edit))
            saes[id(edit.sae)] = edit.sae
    for key, edits in by_sae.items():
        sae = saes[key]
        W = sae.W_dec.detach()
        device = W.device
        rows_idx = torch.tensor([r for r, _ in edits], device=device)
        pos_idx = torch.tensor([e.position for _, e in edits], device=device)
        feat_idx = torch.tensor([e.feature for _, e in edits], device=device)
        values = torch.tensor([e.value for _, e in edits], dtype=W.dtype, device=device)
        adds = torch.tensor([e.add for _, e in edits], device=device)

        def edit_rows(h, sae=sae, W=W, rows_idx=rows_idx, pos_idx=pos_idx, feat_idx=feat_idx,
                 values=values, adds=adds):
            # set-mode edits are sized against the activations h has on entry (as steering.clamp)
            acts = sae.encode(h[rows_idx, pos_idx].to(sae.W_enc.dtype))
            current = acts[torch.arange(len(feat_idx), device=acts.device), feat_idx]
            coef = torch.where(adds, values, values - current)
            delta = (coef[:, None] * W[feat_idx]).to(h.dtype)
            return h.index_put((rows_idx.to(h.device), pos_idx.to(h.device)),
                               delta.to(h.device), accumulate=True)
        stack.enter_context(_edit_hook(model, sae, edit_rows))


def _clt_hooks(model, rows: list[_Row], n_pos: int) -> list:
    """circuit-tracer's ``calculate_delta_hook`` + ``intervention_hook`` with a batch axis."""
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    device, dtype = model.cfg.device, model.cfg.dtype
    edits_by_layer: dict[int, list[tuple[int, int, int, float]]] = {}
    for r, row in enumerate(rows):
        for layer, sets in row.clt.items():
            for (pos, feature), value in sets.items():
                edits_by_layer.setdefault(layer, []).append((r, pos, feature, value))
    if not edits_by_layer:
        return []
    layer_deltas = torch.zeros(n_layers, len(rows) * n_pos, d_model, dtype=dtype, device=device)
    current: dict[int, torch.Tensor] = {}

    def encode(acts, hook, layer):
        features = model.transcoders.encode_layer(acts, layer).detach()
        features[:, model.zero_positions] = 0  # circuit-tracer's first-position rule
        current[layer] = features

    def deltas(layer):
        edits = edits_by_layer[layer]
        r = torch.tensor([e[0] for e in edits], device=device)
        pos = torch.tensor([e[1] for e in edits], device=device)
        feat = torch.tensor([e[2] for e in edits], device=device)
        value = torch.tensor([e[3] for e in edits], dtype=dtype, device=device)
        delta = value - current.pop(layer)[r, pos, feat]
        unique, inverse = feat.unique(return_inverse=True)
        vectors = model.transcoders._get_decoder_vectors(layer, unique)[inverse.cpu()]
        vectors = vectors.to(device=device, dtype=dtype)
        flat = r * n_pos + pos
        if vectors.ndim == 2:  # per-layer transcoders: writes to its own layer only
            layer_deltas[layer].index_add_(0, flat, vectors * delta[:, None])
        else:  # CLT: (n, n_layers - layer, d_model), row m - layer writes to layer m
            vectors = (vectors * delta[:, None, None]).transpose(0, 1)
            layer_deltas[-vectors.shape[0]:].index_add_(1, flat, vectors)

    def intervene(acts, hook, layer):
        if layer in edits_by_layer:
            deltas(layer)
        return acts + layer_deltas[layer].view(len(rows), n_pos, d_model)

    hooks = [(f"blocks.{layer}.{model.feature_input_hook}",
              lambda acts, hook, layer=layer: encode(acts, hook, layer))
             for layer in edits_by_layer]
    first = min(edits_by_layer)
    hooks += [(f"blocks.{layer}.{model.feature_output_hook}",
               lambda acts, hook, layer=layer: intervene(acts, hook, layer))
              for layer in range(first, n_layers)]
    return hooks


@torch.no_grad()
def _run_rows(model, tokens: torch.Tensor, rows: list[_Row],
              patterns: list[torch.Tensor] | None, capture: bool = False):
    """Last-position logits of a batch, one row per setting; attention patterns frozen to
    ``patterns`` (per layer (1 or rows, heads, q, k)) when given, captured when ``capture``."""
    n_pos = tokens.shape[-1]
    batch = tokens.expand(len(rows), n_pos)
    hooks = _clt_hooks(model, rows, n_pos)
    captured: dict[int, torch.Tensor] = {}
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_pattern"
        if patterns is not None:
            frozen = patterns[layer].expand(len(rows), *patterns[layer].shape[1:])
            hooks.append((name, lambda acts, hook, frozen=frozen: frozen))
        if capture:
            hooks.append((name, lambda acts, hook, layer=layer: captured.__setitem__(
                layer, acts.detach())))
    with contextlib.ExitStack() as stack:
        _sae_hooks(model, rows, stack)
        with model.hooks(fwd_hooks=hooks):
            logits = _last_logits(model, batch)
    return logits, [captured[layer] for layer in sorted(captured)]


def intervened_logits(clean: CleanRun, interventions: Sequence[Intervention],
                      batch_size: int | None = None) -> torch.Tensor:
    """(len(interventions), d_vocab) next-token logits, row i equal to circuit-tracer's
    ``feature_intervention(tokens, interventions[i].clt_tuples(clean))`` (with the SAE edits
    applied throughout). All rows in one batched pass (two when SAE and CLT edits meet: the
    first gives those rows their own patterns to freeze); ``batch_size`` rows at most per pass,
    halved while the device runs out of memory."""
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    clean.check(interventions)
    model = clean.model
    rows = [_row(iv, clean) for iv in interventions]
    out: list[torch.Tensor | None] = [None] * len(rows)
    size = batch_size or max(1, len(rows))
    start = 0
    while start < len(rows):
        chunk = rows[start:start + size]
        try:
            out[start:start + len(chunk)] = list(_chunk_logits(model, clean, chunk))
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            _empty_cache(model)
            continue
        start += len(chunk)
    if not rows:
        return clean.logits.new_zeros(0, clean.logits.shape[-1])
    return torch.stack(out)


def _chunk_logits(model, clean: CleanRun, rows: list[_Row]) -> torch.Tensor:
    if not any(row.sae for row in rows):
        return _run_rows(model, clean.tokens, rows, clean.patterns)[0]
    # SAE edits change what the clean run of each row is: its patterns are what CLT edits freeze
    sae_only = [_Row({}, row.sae) for row in rows]
    logits, patterns = _run_rows(model, clean.tokens, sae_only, None, capture=True)
    if not any(row.clt for row in rows):
        return logits
    return _run_rows(model, clean.tokens, rows, patterns)[0]


def _empty_cache(model) -> None:
    if torch.device(model.cfg.device).type == "cuda":
        torch.cuda.empty_cache()


# --- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenProb:
    id: int
    token: str
    p: float

    def to_dict(self) -> dict:
        return {"id": self.id, "token": self.token, "p": self.p}


@dataclass
class Outcome:
    """One setting's next-token distribution (``intervention`` None: unsteered)."""

    intervention: Intervention | None
    logits: torch.Tensor  # (d_vocab,) float32 on the CPU
    top: list[TokenProb]
    target_p: float

    @property
    def group(self) -> str:
        return "unsteered" if self.intervention is None else self.intervention.name

    @property
    def label(self) -> str:
        return "" if self.intervention is None else self.intervention.label

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"group": self.group}
        if self.intervention is not None:
            out.update(mode=self.intervention.mode, strength=self.intervention.strength)
        out.update(target_p=self.target_p, top=[t.to_dict() for t in self.top])
        return out


@dataclass
class InterventionResult:
    prompt: str
    tokens: list[str]  # the prompt's tokens, position 0 the prepended special token
    target: TokenProb  # the token whose probability is tracked (p: unsteered)
    clean: Outcome
    outcomes: list[Outcome]

    def get(self, group: str, strength: float | None = None, mode: str | None = None) -> Outcome:
        for o in self.outcomes:
            iv = o.intervention
            assert iv is not None  # outcomes are the intervened settings; clean is apart
            if (iv.name == group and (strength is None or iv.strength == float(strength))
                    and (mode is None or iv.mode == mode)):
                return o
        wanted = " ".join(str(x) for x in (group, mode, strength) if x is not None)
        raise KeyError(f"no setting {wanted} (settings: "
                       f"{', '.join(f'{o.group} {o.label}' for o in self.outcomes)})")

    def sweeps(self) -> list[dict]:
        """Per (group, mode): strengths and target probabilities, in the order evaluated."""
        lines: dict[tuple[str, str], dict] = {}
        for o in self.outcomes:
            iv = o.intervention
            assert iv is not None
            line = lines.setdefault((iv.name, iv.mode), {"group": iv.name, "mode": iv.mode,
                                                         "strengths": [], "target_p": []})
            line["strengths"].append(iv.strength)
            line["target_p"].append(o.target_p)
        return list(lines.values())

    def to_dict(self) -> dict:
        """JSON-ready: the study record's ``clean``/``interventions``/``sweeps`` fields."""
        return {"prompt": self.prompt, "tokens": self.tokens,
                "target": {"id": self.target.id, "token": self.target.token},
                "clean": self.clean.to_dict(),
                "interventions": [o.to_dict() for o in self.outcomes],
                "sweeps": self.sweeps()}

    def table(self, k: int = 5) -> str:
        """Plain text: unsteered, then each setting: p(target) and the top-k tokens with %."""
        header = ["group", "intervention", f"p({self.target.token!r})", f"top-{k}"]
        rows = [[o.group, o.label, _pct(o.target_p),
                 ", ".join(f"{t.token!r} {_pct(t.p)}" for t in o.top[:k])]
                for o in [self.clean, *self.outcomes]]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        lines = []
        for i, r in enumerate([header, *rows]):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(header[3]))
        return "\n".join(lines)


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def _target_id(model, target, clean_logits: torch.Tensor) -> int:
    if target is None:
        return int(clean_logits.argmax())
    if isinstance(target, str):
        ids = model.tokenizer.encode(target, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"target {target!r} is {len(ids)} tokens {ids}; expected one token "
                             "(a token string such as ' Barack', or a token id)")
        return int(ids[0])
    if isinstance(target, bool) or not isinstance(target, int):
        raise ValueError(f"target must be a token string or id, got {target!r}")
    vocab = clean_logits.shape[-1]
    if not 0 <= target < vocab:
        raise ValueError(f"target token id {target} out of range 0..{vocab - 1}")
    return int(target)


def _outcome(iv, logits: torch.Tensor, k: int, target: int, text) -> Outcome:
    logits = logits.detach().float().cpu()
    probs = logits.softmax(-1)
    top = probs.topk(min(k, probs.shape[-1]))
    return Outcome(iv, logits, [TokenProb(int(i), text(int(i)), float(p))
                                for p, i in zip(top.values, top.indices)], float(probs[target]))


# --- entry points -------------------------------------------------------------------------------
def evaluate(model, prompt, interventions: Sequence[Intervention], top_k: int = 10,
             target=None, saes: Mapping[Any, Any] | None = None,
             batch_size: int | None = None) -> InterventionResult:
    """The unsteered prompt and each intervention: top-k next tokens and p(target) (default
    target: the unsteered top-1). ``model``: a Session or circuit-tracer's ReplacementModel."""
    from qwen_interp.apps.features.export import token_strings
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    clean = clean_run(model, prompt, saes)
    inner = clean.model
    target_id = _target_id(inner, target, clean.logits)
    text = token_strings(inner.tokenizer)
    logits = intervened_logits(clean, interventions, batch_size)
    unsteered = _outcome(None, clean.logits, top_k, target_id, text)
    return InterventionResult(
        prompt=prompt if isinstance(prompt, str) else inner.tokenizer.decode(clean.tokens[0]),
        tokens=[text(int(t)) for t in clean.tokens[0]],
        target=TokenProb(target_id, text(target_id), unsteered.target_p),
        clean=unsteered,
        outcomes=[_outcome(iv, row, top_k, target_id, text)
                  for iv, row in zip(interventions, logits)])


def sweep(model, prompt, groups: Iterable[Any], strengths: Iterable[float],
          mode: str = "scale", top_k: int = 10, target=None,
          saes: Mapping[Any, Any] | None = None,
          batch_size: int | None = None) -> InterventionResult:
    """Every (group, strength) with one ``mode``, plus the unsteered prompt, in one batched pass
    after the clean one (:func:`evaluate`). ``mode="ablate"`` ignores strengths (one row per
    group)."""
    groups, strengths = list(groups), [float(s) for s in strengths]
    if mode == "ablate":
        settings = [Intervention(g, "ablate") for g in groups]
    else:
        if not strengths:
            raise ValueError(f"a {mode!r} sweep needs at least one strength")
        settings = [Intervention(g, mode, s) for g in groups for s in strengths]
    return evaluate(model, prompt, settings, top_k=top_k, target=target, saes=saes,
                    batch_size=batch_size)
