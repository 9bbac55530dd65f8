"""``qwen-interp features compute``: per-feature statistics of a CLT and SAEs over a corpus."""

from __future__ import annotations

import argparse

from qwen_interp.specs import Command

DEFAULT_OUT = "features_out"


def configure(parser: argparse.ArgumentParser) -> None:
    from qwen_interp.apps.commands import positive_int

    from .settings import StatsConfig
    sub = parser.add_subparsers(dest="features_command", required=True,
                                parser_class=type(parser))
    p = sub.add_parser("compute", help="statistics of every attached dictionary over a corpus")
    defaults = StatsConfig()
    p.add_argument("--corpus", required=True,
                   help="a .txt (one document per line), .jsonl or .parquet file, a folder of "
                        "them, or hf:NAME[:CONFIG][:SPLIT] (a dataset in the local cache)")
    p.add_argument("--out", default=DEFAULT_OUT, help="run folder (resumes a killed run)")
    p.add_argument("--model", help="model repo id or alias (default: offline demo)")
    p.add_argument("--transcoder", help="CLT repo id or alias (default: offline demo)")
    p.add_argument("--sae", action="append", default=[], metavar="RELEASE:LAYERS",
                   help="an SAE release and comma-separated layers, e.g. "
                        "qwen-scope-3-1.7b-base-w32k-l50:6,12 (repeatable)")
    p.add_argument("--no-transcoder", action="store_true", help="SAEs only")
    p.add_argument("--text-field", default="text", help="JSON/Parquet/dataset text column")
    p.add_argument("--ctx-len", type=positive_int, default=128,
                   help="tokens per context, the special first token included")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--shard-batches", type=positive_int, default=32,
                   help="batches per shard: the unit of work, of Ray tasks and of checkpoints")
    p.add_argument("--max-contexts", type=positive_int, default=None)
    p.add_argument("--top-k", type=positive_int, default=defaults.top_k)
    p.add_argument("--samples", type=positive_int, default=defaults.samples)
    p.add_argument("--window-before", type=int, default=defaults.before)
    p.add_argument("--window-after", type=int, default=defaults.after)
    p.add_argument("--bins", type=positive_int, default=defaults.bins)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run shards on Ray: a local instance, or ADDRESS (auto, ray://...)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="Ray actors (default: one per GPU, else one per CPU)")
    p.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                   help="checkpoint the running total this often (0: after every shard)")
    p.add_argument("--no-progress", action="store_true")


def parse_saes(values: list[str]) -> tuple[tuple[str, int], ...]:
    out = []
    for value in values:
        release, sep, layers = value.rpartition(":")
        try:
            parsed = [int(x) for x in layers.split(",")] if sep and release else None
        except ValueError:
            parsed = None
        if not parsed or any(layer < 0 for layer in parsed):
            raise ValueError(f"--sae {value!r}: expected RELEASE:LAYERS, e.g. "
                             "qwen-scope-3-1.7b-base-w32k-l50:6,12")
        out += [(release, layer) for layer in parsed]
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    from qwen_interp.apps import trace
    from qwen_interp.apps.commands import quiet_trust_remote_code_warning

    from .collect import RunConfig
    from .settings import StatsConfig
    from .corpus import resolve_sources
    stats = StatsConfig(top_k=args.top_k, samples=args.samples, before=args.window_before,
                        after=args.window_after, bins=args.bins)
    demo = args.model is None and args.transcoder is None
    model = args.model or trace.DEFAULT_MODEL
    transcoder = None if args.no_transcoder else (args.transcoder or trace.DEFAULT_TRANSCODER)
    config = RunConfig(model=model, transcoder=transcoder, corpus=args.corpus,
                       saes=parse_saes(args.sae), text_field=args.text_field,
                       ctx_len=args.ctx_len, batch_size=args.batch_size,
                       shard_batches=args.shard_batches, max_contexts=args.max_contexts,
                       dtype=args.dtype, stats=stats)
    config.check()  # before any loading: a bad value is one line, at once
    if not args.corpus.startswith("hf:"):  # a dataset is looked up once the cache is chosen
        resolve_sources(args.corpus, text_field=args.text_field)
    trace.resolve_device(args.device)
    quiet_trust_remote_code_warning()
    if demo and args.corpus.startswith("hf:"):
        raise ValueError(f"--corpus {args.corpus}: a dataset from the Hugging Face cache needs "
                         "--model and --transcoder (the offline demo uses a cache of its own)")
    if demo:
        trace.start_demo(model, trace.DEFAULT_TRANSCODER)
    from .job import compute
    result = compute(config, args.out, device=args.device, ray_address=args.ray,
                     ray_workers=args.workers, progress=not args.no_progress,
                     checkpoint_seconds=args.checkpoint_every)
    report = result.report
    resumed = (f", resumed at shard {result.resumed_from_shard}"
               if result.resumed_from_shard else "")
    print(f"features: {result.contexts} contexts ({result.tokens} tokens) in {result.shards} "
          f"shards, {result.seconds:.1f} s{resumed}")
    print(f"corpus: {report['documents']} documents used, {report['skipped_empty']} empty and "
          f"{report['skipped_undecodable']} undecodable skipped")
    for path in sorted((result.out / "tables").glob("*.parquet")):
        print(f"table: {path}")
    if (result.out / "features").is_dir():
        print(f"viewer sidecar: {result.out / 'features'} (browse it: qwen-interp explore "
              f"--features {result.out}; or upload it next to the transcoder on the Hub)")
    return 0


COMMAND = Command("features", "feature statistics over a corpus (features compute)",
                  configure=configure, run=run)
