"""``qwen-interp synthesize``: generation steered toward features a dataset never activates,
keeping only samples in which the target really fires on the unsteered model.

    qwen-interp synthesize DATASET --prompts FILE [--top N | --features sae/L:F,...]
    qwen-interp synthesize --stats FEATURES_RUN_DIR --prompts FILE [--top N]

Writes ``samples.jsonl`` (kept samples with their evidence) and ``report.json`` (attempts and
kept per feature and strength) to ``--out``. Method: ``applications/synthesize.py``.
"""

from __future__ import annotations

import argparse
import json

from qwen_interp.specs import Command


def configure(parser: argparse.ArgumentParser) -> None:
    from qwen_interp.apps.commands import positive_int

    from .model import add_model_options
    parser.add_argument("dataset", nargs="?", help="documents whose inactive features to target: "
                        ".txt (one per line), .jsonl, .parquet, a folder, hf:NAME")
    parser.add_argument("--stats", metavar="DIR",
                        help="a `qwen-interp features compute` output folder: inactive = count 0")
    parser.add_argument("--features", help="comma-separated targets (sae/L:F) instead of the "
                        "first --top inactive SAE features")
    parser.add_argument("--top", type=positive_int, default=4,
                        help="targets: the first N inactive SAE features in column order")
    parser.add_argument("--prompts", required=True, help="seed prompts file (same formats)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--strengths", default="4,8,16",
                        help="comma-separated steering strengths s (h += s * W_dec[:, f])")
    parser.add_argument("--samples", type=positive_int, default=1,
                        help="samples per prompt and strength (vary only with --temperature)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=24)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=positive_int, default=256)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--threshold", type=float, default=0.0, help="fires: activation above")
    parser.add_argument("--out", default="synthesize_out")
    add_model_options(parser)


def strengths(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"--strengths {text!r}: expected comma-separated numbers, e.g. 4,8,16")
    return values


def run(args: argparse.Namespace) -> int:
    from qwen_interp.apps.trace import check_output_dir
    from qwen_interp.atomic import replace_file

    from .anomalies_command import read_texts
    from .docpass import PassConfig
    from .model import feature_index, start
    from .synthesize import (attempt_record, inactive_from_stats, inactive_on_dataset,
                             steerable, synthesize)
    levels = strengths(args.strengths)
    if not (args.dataset or args.stats or args.features):
        raise ValueError("give a DATASET, --stats DIR or --features (what to target)")
    if args.threshold < 0:
        raise ValueError(f"--threshold must be >= 0, got {args.threshold}")
    out = check_output_dir(args.out)
    prompts = read_texts(args.prompts, args.text_field, "--prompts")
    dataset = read_texts(args.dataset, args.text_field, "dataset") if args.dataset else None
    config, session = start(args)
    index = feature_index(session)
    pass_config = PassConfig(max_tokens=args.max_tokens, batch_size=args.batch_size,
                             threshold=args.threshold)
    inactive: list[str] = []
    if args.stats:
        inactive = inactive_from_stats(args.stats, index)
    elif dataset is not None:
        inactive = inactive_on_dataset(session, dataset, config=pass_config, model_config=config,
                                       ray_address=args.ray, workers=args.workers,
                                       progress=not args.no_progress)
    if args.features:
        targets = [f.strip() for f in args.features.split(",") if f.strip()]
        for name in targets:
            index.column(name)
    else:
        targets = steerable(inactive, index)[:args.top]
        if not targets:
            raise ValueError("no inactive SAE feature to target (every SAE feature fires on "
                             "the dataset; CLT features are not steered here)")
    result = synthesize(session, targets, prompts, strengths=levels, samples=args.samples,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        seed=args.seed, config=pass_config, model_name=config.model,
                        progress=not args.no_progress)
    result.inactive = inactive
    report = result.report()
    report.update(dataset=args.dataset, stats=args.stats, prompts=args.prompts,
                  model=config.model, transcoder=config.transcoder,
                  targets_inactive={t: t in set(inactive) for t in targets}
                  if (args.dataset or args.stats) else None)
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(attempt_record(a), ensure_ascii=False) + "\n"
                    for a in result.kept)
    replace_file(out / "samples.jsonl", lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    replace_file(out / "report.json", lambda tmp: tmp.write_text(
        json.dumps(report, indent=1) + "\n", encoding="utf-8"))
    if args.dataset or args.stats:
        print(f"{len(inactive)} features never fire on the dataset "
              f"({report['inactive_sae_features']} SAE, "
              f"{report['inactive_clt_features_not_steered']} CLT, not steered)")
    for name, row in report["per_feature"].items():
        by = ", ".join(f"s={s}: {v['kept']}/{v['attempts']}" for s, v in row["by_strength"].items())
        print(f"{name}: kept {row['kept']} of {row['attempts']} ({by})")
    for a in result.kept[:5]:
        print(f"  {a.feature} s={a.strength:g}: {a.continuation!r} (fires on "
              f"{a.evidence['token']!r}, {a.evidence['max_activation']:.3f})")
    print(f"wrote {out / 'samples.jsonl'} ({len(result.kept)} samples) and {out / 'report.json'}")
    return 0


COMMAND = Command("synthesize", "generation steered toward features a dataset never activates",
                  configure=configure, run=run)
