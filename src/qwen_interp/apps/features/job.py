"""``compute()``: the whole job, from corpus to tables and sidecar, resumable.

One run per output folder, held under a lock. Leftovers of a killed run (temporary files) are
swept first; its checkpoint is picked up, and shards before it are read (to keep the corpus in
step) but not computed again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from . import accumulators, collect, export
from .collect import RunConfig


@dataclass
class RunResult:
    out: Path
    contexts: int
    tokens: int
    shards: int
    resumed_from_shard: int
    seconds: float
    report: dict


def compute(config: RunConfig, out: str | Path, *, device=None, ray_address: str | None = None,
            ray_workers: int | None = None, progress: bool = True, session=None,
            checkpoint_seconds: float = 60.0) -> RunResult:
    """Compute the statistics of ``config`` into folder ``out``. ``ray_address``: None runs in
    this process; ``"local"`` starts a local Ray instance; anything else is passed to
    ``ray.init(address=...)`` (``"auto"``, ``"ray://host:10001"``). The running total is
    checkpointed when ``checkpoint_seconds`` have passed since the last checkpoint (0: after
    every shard) and at the end; a killed run resumes from the last one."""
    from qwen_interp.atomic import lock_path, remove_leftovers, try_lock

    from .corpus import CorpusReport, resolve_sources
    config.check()
    sources = resolve_sources(config.corpus, text_field=config.text_field)  # bad input: now
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with try_lock(lock_path(out)) as free:
        if not free:
            raise ValueError(f"another run is writing to {out}; wait for it or use another --out")
        remove_leftovers(out, others=True)
        identity = collect.run_identity(config, sources)
        collect.check_run_folder(out, identity)
        collect.write_json(out / collect.RUN_FILE, identity)
        started = time.perf_counter()
        if session is None:
            session = collect.load_session(config, device=device)
        names = list(collect.blocks(session))
        merge_device = session.model.cfg.device if ray_address is None else "cpu"
        total, next_shard, done = collect.load_checkpoint(out, names, merge_device)
        report = CorpusReport(sources=sources)
        tokenizer = session.model.tokenizer
        first = collect.first_token_id(tokenizer, config.model)
        todo = (item for item in collect.shards(config, tokenizer, first, report)
                if item[0] >= next_shard)
        bar = _progress(progress, config, done)
        n_shards = next_shard
        try:
            results: Iterator[tuple[int, int, int, dict]]
            if ray_address is None:
                def in_process():
                    for index, first_ctx, contexts in todo:
                        # Examples that cannot beat the total so far are skipped (same result).
                        floors = None if total is None else {
                            name: accumulators.floors(block) for name, block in total.items()}
                        yield index, first_ctx, len(contexts), collect.shard_stats(
                            session, contexts, first_ctx, config, on_batch=bar.update,
                            to_cpu=False, floors=floors)
                results = in_process()
            else:
                from .ray_backend import ray_shard_stats
                results = ray_shard_stats(config, todo, address=ray_address,
                                          workers=ray_workers, device=device,
                                          saes=list(session.saes.values()), on_shard=bar.update)
            saved = time.monotonic()
            for index, _, n_contexts, stats in results:
                total = collect.merge_into(total, stats)  # in shard order: exact
                done += n_contexts
                n_shards = index + 1
                _estimate_total(bar, report, config)
                if time.monotonic() - saved >= checkpoint_seconds:
                    collect.save_checkpoint(out, total, n_shards, done)
                    saved = time.monotonic()
            if total is not None and n_shards > next_shard:
                collect.save_checkpoint(out, total, n_shards, done)
        finally:
            bar.close()
        if total is None:
            raise ValueError(f"corpus {config.corpus} gave no context of {config.ctx_len} "
                             f"tokens (documents: {report.documents}, tokens: {report.tokens})")
        total = {name: block.to("cpu") for name, block in total.items()}
        write_outputs(out, config, session, total)
        seconds = time.perf_counter() - started
        summary = {**asdict(report), "contexts_computed": done,
                   "tokens_computed": done * config.ctx_len, "shards": n_shards,
                   "resumed_from_shard": next_shard, "complete": True}
        collect.write_json(out / collect.REPORT_FILE, summary)
        return RunResult(out=out, contexts=done, tokens=done * config.ctx_len, shards=n_shards,
                         resumed_from_shard=next_shard, seconds=seconds, report=summary)


def write_outputs(out: Path, config: RunConfig, session, total) -> None:
    """Parquet tables (``tables/clt.parquet``, ``tables/sae.parquet``) and the record sidecars:
    ``features/`` for the CLT (the graph viewer's), ``sae_features/`` for the SAEs."""
    from .sidecar import write_sidecar
    text = export.token_strings(session.model.tokenizer)
    (out / "tables").mkdir(exist_ok=True)
    logits = {name: export.logit_effects(session, name) for name in total}
    meta = {"config": config.identity(),
            "histogram_edges": export.HistogramBins(config.stats).edges.tolist()}
    sae_release = {layer: release for release, layer in config.saes}
    dictionary = {name: str(config.transcoder) if name.startswith("clt/")
                  else sae_release.get(int(name.split("/")[1]), "sae") for name in total}
    for kind in ("clt", "sae"):
        names = [name for name in total if name.startswith(f"{kind}/")]
        if names:
            export.write_parquet(out / "tables" / f"{kind}.parquet", (
                export.block_table(name, total[name], config.stats, dictionary=dictionary[name],
                                   text=text, logits=logits[name], ctx_len=config.ctx_len)
                for name in names), meta)
    # The same record format for both kinds: the CLT's is the graph viewer's `features/`; the
    # SAEs' (one layer each) feed the Explorer's feature pages.
    for kind, folder in (("clt", "features"), ("sae", "sae_features")):
        names = [name for name in total if name.startswith(f"{kind}/")]
        if names:
            layers: Iterator[tuple[int, Iterator[dict]]] = (
                (int(name.split("/")[1]), export.viewer_records(
                    total[name], config.stats, transcoder_id=dictionary[name], text=text,
                    logits=logits[name])) for name in names)
            write_sidecar(out / folder, layers)


def _progress(enabled: bool, config: RunConfig, done_contexts: int):
    """A tqdm bar in tokens: throughput, and an ETA once the total is estimated (a disabled bar
    takes the same calls and shows nothing)."""
    from tqdm.auto import tqdm
    total = config.max_contexts * config.ctx_len if config.max_contexts else None
    return tqdm(total=total, initial=done_contexts * config.ctx_len, unit="tok",
                unit_scale=True, desc="features", dynamic_ncols=True, disable=not enabled)


def _estimate_total(bar, report, config: RunConfig) -> None:
    """Total tokens, from the share of the corpus read so far, so the bar shows an ETA."""
    if not (report.input_bytes and report.input_bytes_read):
        return
    estimate = report.contexts * config.ctx_len * report.input_bytes / report.input_bytes_read
    if config.max_contexts:
        estimate = min(estimate, config.max_contexts * config.ctx_len)
    bar.total = max(int(estimate), bar.n)
    bar.refresh()
