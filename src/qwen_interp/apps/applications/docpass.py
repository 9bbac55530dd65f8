"""The document pass every application runs: each text's feature activations, one forward per
batch on the shared session, every attached dictionary at once; in this process or on Ray.

Unlike the statistics pass (``features.collect``), which packs a corpus into contexts, this pass
keeps documents apart, because the applications ask questions of documents (is this one toxic?
which features does this dataset activate? which tokens of this generation switch script?).

- Each text is tokenized without special tokens and gets circuit-tracer's special first token
  (``<|endoftext|>`` for Qwen), as in its graphs and in the statistics pass; position 0's features
  are left out, as circuit-tracer zeroes them. Texts longer than ``max_tokens`` (first token
  included) are cut there, and counted.
- Texts are batched by length (longest first) and padded on the right. The model is causal, so
  a padded position changes nothing before it: every document's activations equal those of the
  document run alone, up to float32 rounding of the different batch shapes (tests: 1e-5).
- ``mode="pooled"``: per document, each feature's maximum activation over its tokens
  (``DocumentFeatures.pooled``, documents × features, sparse). ``mode="tokens"``: every token's
  activations (``DocumentFeatures.tokens``, tokens × features, sparse, with ``doc_offsets``).
  Only activations above ``threshold`` are stored.
- Work items are chunks of ``chunk_docs`` documents. On Ray (``ray_address``) each actor holds one
  model replica and results come back in chunk order; chunks are batched the same way in either
  case, so the results are identical given the same torch threads per process (Ray's CPU actors
  run one each; a matmul's float rounding depends on how it is split over threads).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from .model import FeatureIndex, ModelConfig

POOLED = "pooled"
TOKENS = "tokens"


@dataclass(frozen=True)
class PassConfig:
    max_tokens: int = 256  # per document, the special first token included
    batch_size: int = 8
    chunk_docs: int = 64  # documents per work item (the unit of Ray tasks)
    threshold: float = 0.0  # an activation above this is stored (and "fires")

    def check(self) -> None:
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2 (the first token and one more), "
                             f"got {self.max_tokens}")
        for name in ("batch_size", "chunk_docs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not np.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"threshold must be a finite number >= 0, got {self.threshold}")


@dataclass
class DocumentFeatures:
    index: FeatureIndex
    n_tokens: np.ndarray  # per document, first token left out
    truncated: int  # documents cut at max_tokens
    pooled: sp.csr_matrix | None = None  # (documents, features): max over the document's tokens
    tokens: sp.csr_matrix | None = None  # (all tokens, features), documents one after another
    token_ids: np.ndarray | None = None  # (all tokens,)
    doc_offsets: np.ndarray | None = None  # (documents + 1,): rows of document i
    extra: dict = field(default_factory=dict)

    @property
    def n_documents(self) -> int:
        return len(self.n_tokens)

    def document_tokens(self, i: int) -> sp.csr_matrix:
        assert self.tokens is not None and self.doc_offsets is not None
        return self.tokens[self.doc_offsets[i]:self.doc_offsets[i + 1]]


def tokenize(tokenizer, texts: Sequence[str], first_token: int, max_tokens: int
             ) -> tuple[list[list[int]], int]:
    """``[first_token] + tokens`` per text, cut at ``max_tokens``; and how many were cut. An
    empty or whitespace-only text is an error naming its position (a dataset row must not
    vanish silently)."""
    from qwen_interp.inputs import check_prompt
    out, cut = [], 0
    for i, text in enumerate(texts):
        check_prompt(text, f"text {i}")
        if not text.strip():
            raise ValueError(f"text {i} is empty or only whitespace")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"text {i} gives no tokens: {text[:40]!r}")
        if len(ids) > max_tokens - 1:
            ids, cut = ids[:max_tokens - 1], cut + 1
        out.append([first_token, *ids])
    return out, cut


def chunk_features(session, chunk: list[list[int]], config: PassConfig, mode: str,
                   on_batch=None) -> dict:
    """One chunk's activations (lists of token ids, each starting with the first token): sparse
    CPU arrays in chunk order. One sparse matrix per batch (not per document): the pass's cost
    stays the forward's."""
    model = session.model
    device = model.cfg.device
    widths = FeatureIndex(_blocks(session))
    order = sorted(range(len(chunk)), key=lambda i: (-len(chunk[i]), i))
    lengths = np.array([len(c) - 1 for c in chunk], dtype=np.int64)  # first token left out
    batches = []
    for start in range(0, len(order), config.batch_size):
        members = order[start:start + config.batch_size]
        width = len(chunk[members[0]])
        tokens = torch.full((len(members), width), chunk[members[0]][0], dtype=torch.long)
        for row, i in enumerate(members):
            tokens[row, :len(chunk[i])] = torch.tensor(chunk[i])
        acts = _forward(session, tokens.to(device))  # block -> (batch, pos, width)
        stacked = torch.cat([acts[name] for name in widths.widths], dim=-1)[:, 1:].float()
        own = torch.arange(width - 1, device=device)[None, :] < torch.as_tensor(
            lengths[members], device=device)[:, None]  # (batch, pos): the document's own tokens
        if mode == POOLED:
            # padding at 0 never shows: only values above threshold (>= 0) are kept
            values = stacked.masked_fill(~own[..., None], 0).amax(dim=1)
        else:
            values = stacked[own]  # rows: document by document, in batch order
        batches.append(_sparse(values, config.threshold))
        if on_batch is not None:
            on_batch(int(lengths[members].sum()) + len(members))
    matrix = sp.vstack(batches, format="csr")
    if mode == POOLED:
        rows = np.argsort(order)  # back to chunk order
    else:
        starts = np.zeros(len(chunk), dtype=np.int64)
        starts[order] = np.concatenate([[0], np.cumsum(lengths[order])[:-1]])
        rows = np.concatenate([np.arange(starts[i], starts[i] + lengths[i])
                               for i in range(len(chunk))])
    return {"matrix": matrix[rows], "n_tokens": lengths}


def _blocks(session) -> dict[str, int]:
    from qwen_interp.apps.features.collect import blocks
    return blocks(session)


@torch.no_grad()
def _forward(session, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    model = session.model
    out: dict[str, torch.Tensor] = {}
    hooks = []
    if session.has_clt:
        for layer in range(model.cfg.n_layers):
            def clt(acts, hook, layer=layer):
                out[f"clt/{layer}"] = model.transcoders.encode_layer(acts, layer)
            hooks.append((f"blocks.{layer}.{model.feature_input_hook}", clt))
    for layer, sae in session.saes.items():
        def encode(acts, hook, layer=layer, sae=sae):
            out[f"sae/{layer}"] = sae.encode(acts.to(sae.dtype))
        hooks.append((sae.cfg.metadata.hook_name, encode))
    last = max(int(name.split("/")[1]) for name in _blocks(session))
    with model.hooks(fwd_hooks=hooks):
        model(tokens, stop_at_layer=last + 1)  # no logits needed
    return out


def _sparse(values: torch.Tensor, threshold: float) -> sp.csr_matrix:
    rows, cols = torch.nonzero(values > threshold, as_tuple=True)
    data = values[rows, cols].cpu().numpy()
    return sp.csr_matrix((data, (rows.cpu().numpy(), cols.cpu().numpy())),
                         shape=tuple(values.shape), dtype=np.float32)


def document_features(session, texts: Sequence[str], *, config: PassConfig | None = None,
                      mode: str = POOLED, model_config: ModelConfig | None = None,
                      ray_address: str | None = None, workers: int | None = None,
                      progress: bool = True, desc: str = "documents") -> DocumentFeatures:
    """The activations of ``texts`` on ``session`` (see the module's docstring). ``ray_address``
    (``"local"``, ``"auto"``, ``"ray://..."``) runs the chunks on Ray actors, which load
    ``model_config`` themselves (SAEs travel from this session)."""
    from qwen_interp.apps.features.collect import first_token_id
    config = config or PassConfig()
    config.check()
    if mode not in (POOLED, TOKENS):
        raise ValueError(f"mode must be {POOLED!r} or {TOKENS!r}, got {mode!r}")
    if ray_address is not None and model_config is None:
        raise ValueError("a Ray pass needs model_config (what the workers load)")
    tokenizer = session.model.tokenizer
    first = first_token_id(tokenizer, model_config.model if model_config else "")
    ids, cut = tokenize(tokenizer, list(texts), first, config.max_tokens)
    if not ids:
        raise ValueError("no texts to run")
    chunks = [ids[i:i + config.chunk_docs] for i in range(0, len(ids), config.chunk_docs)]
    bar = _progress(progress, sum(len(c) for c in ids), desc)
    try:
        results: Iterable[dict]
        if ray_address is None:
            results = (chunk_features(session, chunk, config, mode, on_batch=bar.update)
                       for chunk in chunks)
        else:
            results = _on_ray(session, chunks, config, mode, model_config, ray_address,
                              workers, bar)
        parts = list(results)
    finally:
        bar.close()
    matrix = sp.vstack([p["matrix"] for p in parts], format="csr")
    n_tokens = np.concatenate([p["n_tokens"] for p in parts])
    result = DocumentFeatures(index=FeatureIndex(_blocks(session)), n_tokens=n_tokens,
                              truncated=cut)
    if mode == POOLED:
        result.pooled = matrix
    else:
        result.tokens = matrix
        result.doc_offsets = np.concatenate([[0], np.cumsum(n_tokens)])
        result.token_ids = np.array([t for doc in ids for t in doc[1:]], dtype=np.int64)
    return result


def pooled_from_tokens(features: DocumentFeatures) -> sp.csr_matrix:
    """Per-document maxima of a ``mode="tokens"`` result (what ``mode="pooled"`` gives)."""
    assert features.tokens is not None and features.doc_offsets is not None
    rows = [features.document_tokens(i).max(axis=0).tocsr()
            for i in range(features.n_documents)]
    return sp.vstack(rows, format="csr")


class DocumentWorker:
    """A Ray actor body: the session once, then chunk after chunk."""

    def __init__(self, model_config: ModelConfig, device, saes, threads: int | None) -> None:
        from .model import load_session
        if threads:
            torch.set_num_threads(threads)
        self.session = load_session(model_config, device=device, saes=saes)

    def compute(self, chunk, config: PassConfig, mode: str):
        return chunk_features(self.session, chunk, config, mode)


def _on_ray(session, chunks, config, mode, model_config, address, workers, bar
            ) -> Iterator[dict]:
    from qwen_interp.apps.features.ray_backend import ordered_actor_map
    saes = [sae.to("cpu") for sae in session.saes.values()] if session.saes else []
    device = session.model.cfg.device

    def arguments(gpus: bool) -> tuple:
        return (model_config, None if gpus else "cpu", saes, None if gpus else 1)
    try:
        for result in ordered_actor_map(DocumentWorker, arguments,
                                        ((chunk, config, mode) for chunk in chunks),
                                        address=address, workers=workers):
            bar.update(int(result["n_tokens"].sum() + len(result["n_tokens"])))
            yield result
    finally:
        for sae in session.saes.values():
            sae.to(device)  # Module.to moves in place: give the driver its SAEs back


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc, dynamic_ncols=True,
                disable=not enabled)
