"""The statistics pass: one forward per batch on the shared model, every dictionary at once.

The corpus is packed into contexts (``corpus.py``) and cut into **shards** of whole batches. A
shard is the unit of work everywhere: in this process by default, or on Ray actors (``--ray``,
``ray_backend.py``). Each shard's statistics start empty; the driver adds the shards' results in
shard order and checkpoints the total atomically, so

- a run split over any number of workers gives exactly the result of one process (the same
  batches, the same order of float additions), and
- a run killed at any point resumes from its last checkpoint without counting a shard twice.

Output folder: ``run.json`` (what was asked), ``checkpoint.safetensors`` (the running total,
with the next shard in its metadata), and at the end ``tables/*.parquet``, ``features/`` (the
CLT's viewer sidecar) and ``report.json``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .accumulators import BlockStats, HistogramBins, StatsConfig

CHECKPOINT = "checkpoint.safetensors"
RUN_FILE = "run.json"
REPORT_FILE = "report.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the numbers; a run folder holds one (``run.json``)."""

    model: str
    transcoder: str | None
    corpus: str
    saes: tuple[tuple[str, int], ...] = ()  # (release, layer)
    text_field: str = "text"
    ctx_len: int = 128
    batch_size: int = 8
    shard_batches: int = 32  # a shard is this many batches
    max_contexts: int | None = None
    dtype: str = "float32"
    stats: StatsConfig = field(default_factory=StatsConfig)

    @property
    def shard_contexts(self) -> int:
        return self.batch_size * self.shard_batches

    def check(self) -> None:
        self.stats.check()
        if self.ctx_len < 2:
            raise ValueError(f"ctx_len must be at least 2 (a first token and one more), got "
                             f"{self.ctx_len}")
        for name in ("batch_size", "shard_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_contexts is not None and self.max_contexts < 1:
            raise ValueError(f"max_contexts must be at least 1, got {self.max_contexts}")
        if self.transcoder is None and not self.saes:
            raise ValueError("nothing to compute: give a transcoder and/or SAEs")
        layers = [layer for _, layer in self.saes]
        if len(set(layers)) != len(layers):
            raise ValueError(f"one SAE per layer: layers {sorted(layers)} repeat")

    def identity(self) -> dict:
        return {"format": FORMAT_VERSION, **json.loads(json.dumps(asdict(self)))}


# --- the model side ----------------------------------------------------------------------------
def load_session(config: RunConfig, device=None, saes=None):
    """The shared model with the CLT and SAEs attached. ``saes``: SAE objects to attach instead
    of loading ``config.saes`` by release (Ray workers get them from the driver)."""
    from qwen_interp.apps.session import Session
    session = Session.from_pretrained(config.model, config.transcoder, device=device,
                                      dtype=config.dtype)
    if saes is None:
        for release, layer in config.saes:
            session.add_saes(release, [layer])
    else:
        for sae in saes:
            session.add_sae(sae)
    return session


def blocks(session) -> dict[str, int]:
    """Block name -> width: ``clt/L`` per CLT layer, ``sae/L`` per attached SAE."""
    out = {}
    if session.has_clt:
        for layer in range(session.model.cfg.n_layers):
            out[f"clt/{layer}"] = int(session.model.transcoders.d_transcoder)
    for layer, sae in sorted(session.saes.items()):
        out[f"sae/{layer}"] = int(sae.cfg.d_sae)
    return out


def shard_stats(session, contexts: np.ndarray, first_context: int, config: RunConfig,
                on_batch=None, to_cpu: bool = True, floors: dict | None = None
                ) -> dict[str, BlockStats]:
    """Statistics of one shard (``contexts`` ``[S, ctx_len]``, the first being context number
    ``first_context``), one forward pass per batch; results on the CPU, or left on the model's
    device (``to_cpu=False``: the in-process driver merges there, which is faster and gives the
    same bits: float64 additions and stable sorts are exact on either). ``floors``: per block,
    :func:`accumulators.floors` of statistics the result will be merged with (earlier shards):
    a shard's own examples may then leave out what cannot survive that merge."""
    model = session.model
    device = model.cfg.device
    edges = HistogramBins(config.stats).tensor(device)
    widths = blocks(session)
    stats = {name: BlockStats.empty(width, config.stats, device) for name, width in widths.items()}
    last_layer = max(int(name.split("/")[1]) for name in widths)
    for start in range(0, len(contexts), config.batch_size):
        tokens = torch.as_tensor(contexts[start:start + config.batch_size], dtype=torch.long,
                                 device=device)
        update = functools.partial(_update, stats=stats, tokens=tokens,
                                   first=first_context + start, config=config, edges=edges,
                                   floors=floors or {})
        hooks = []
        if session.has_clt:
            for layer in range(model.cfg.n_layers):
                hooks.append((f"blocks.{layer}.{model.feature_input_hook}", functools.partial(
                    _clt_hook, session=session, layer=layer, update=update)))
        for layer, sae in session.saes.items():
            hooks.append((sae.cfg.metadata.hook_name, functools.partial(
                _sae_hook, sae=sae, layer=layer, update=update)))
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=last_layer + 1)  # no unembedding: no logits needed
        if on_batch is not None:
            on_batch(tokens.numel())
    return {name: s.to("cpu") for name, s in stats.items()} if to_cpu else stats


def _update(name: str, acts, *, stats, tokens, first, config, edges, floors) -> None:
    stats[name].update(acts, tokens, first, config.stats, edges, floors.get(name))


def _clt_hook(acts, hook, *, session, layer, update):
    update(f"clt/{layer}", session.model.transcoders.encode_layer(acts, layer))


def _sae_hook(acts, hook, *, sae, layer, update):
    update(f"sae/{layer}", sae.encode(acts.to(sae.dtype)))


def merge_into(total: dict[str, BlockStats] | None, shard: dict[str, BlockStats]
               ) -> dict[str, BlockStats]:
    """``total`` with ``shard`` added (in place: the driver owns ``total``)."""
    if total is None:
        return shard
    return {name: total[name].merge_(shard[name]) for name in total}


# --- shards of the corpus ----------------------------------------------------------------------
def shards(config: RunConfig, tokenizer, first_token_id: int, report) -> Iterator[
        tuple[int, int, np.ndarray]]:
    """``(shard index, first context index, contexts)`` in corpus order; the last shard may be
    short. Deterministic: every process that reads the corpus cuts the same shards."""
    from .corpus import iter_contexts
    contexts = iter_contexts(config.corpus, tokenizer, ctx_len=config.ctx_len,
                             first_token_id=first_token_id, separator_token_id=first_token_id,
                             text_field=config.text_field, report=report)
    buffer: list[np.ndarray] = []
    index = first = taken = 0
    for context in contexts:
        buffer.append(context)
        taken += 1
        if len(buffer) == config.shard_contexts:
            yield index, first, np.stack(buffer)
            index, first, buffer = index + 1, first + len(buffer), []
        if config.max_contexts is not None and taken >= config.max_contexts:
            break
    if buffer:
        yield index, first, np.stack(buffer)


def first_token_id(tokenizer, model_name: str = "") -> int:
    """The special token circuit-tracer puts first (Qwen: ``<|endoftext|>``), asked of its own
    ``ensure_tokenized`` so the contexts match its graphs whatever rule it follows."""
    from circuit_tracer.replacement_model.common import ensure_tokenized
    ordinary = tokenizer("The cat", add_special_tokens=False)["input_ids"]  # 2+: it squeezes
    tokens = ensure_tokenized(ordinary, tokenizer, "cpu", model_name)
    if len(tokens) != len(ordinary) + 1:
        raise ValueError("circuit-tracer puts no special token first for this tokenizer; "
                         "its graphs leave position 0 out, so the statistics need one")
    return int(tokens[0])


# --- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(out: Path, total: dict[str, BlockStats], next_shard: int,
                    contexts_done: int) -> None:
    """Atomically replace the checkpoint (temporary file, then rename)."""
    from safetensors.torch import save_file

    from qwen_interp.atomic import replace_file
    tensors = {}
    for name, block in total.items():
        tensors.update({k: v.contiguous().cpu() for k, v in block.tensors(f"{name}:").items()})
    metadata = {"next_shard": str(next_shard), "contexts_done": str(contexts_done)}
    replace_file(out / CHECKPOINT, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_checkpoint(out: Path, names, device="cpu"
                    ) -> tuple[dict[str, BlockStats] | None, int, int]:
    """``(total, next shard, contexts done)``; ``(None, 0, 0)`` without a checkpoint."""
    path = out / CHECKPOINT
    if not path.exists():
        return None, 0, 0
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            tensors = {key: fh.get_tensor(key).to(device) for key in fh.keys()}
        total = {name: BlockStats.from_tensors(tensors, f"{name}:") for name in names}
        return total, int(meta["next_shard"]), int(meta["contexts_done"])
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint: say so, never guess
        raise ValueError(f"{path} is damaged ({type(exc).__name__}: {exc}); delete it to "
                         "recompute from the start") from None


def run_identity(config: RunConfig, sources: list[str]) -> dict:
    """What ``run.json`` holds: the settings, and the corpus files as they are now (size and
    modification time), so a resumed run never mixes two versions of a corpus."""
    files = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            stat = path.stat()
            files.append([source, stat.st_size, stat.st_mtime_ns])
        else:
            files.append([source])
    return {**config.identity(), "corpus_files": files}


def check_run_folder(out: Path, identity: dict) -> None:
    """A folder holds one run: refuse to mix statistics of different settings or corpora."""
    run_file = out / RUN_FILE
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{run_file} is unreadable ({exc}); use another --out") from None
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity)
                             if previous.get(k) != identity.get(k))
            raise ValueError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                             "use another --out, or delete it")


def write_json(path: Path, data) -> None:
    from qwen_interp.atomic import replace_file
    replace_file(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))
