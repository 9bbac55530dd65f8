"""Benchmark (not a test): corpus throughput of ``classify eval`` and ``overlap`` against the bare
statistics pass, on the built-in demo (CPU here), the same texts, in one run.

  stats:    ``features.collect.shard_stats`` over the texts packed as the statistics pass packs
            a corpus (``corpus.iter_contexts``: first token, documents joined by
            ``<|endoftext|>``, contexts of ``--ctx-len``), every dictionary of the session
            (the demo's CLT and its SAEs at layers 0-3): the baseline of the goal;
  forward:  the document pass's own forward and encoders (``docpass._forward``, hooks on the
            shared model) over the same length-sorted, padded document batches, with nothing
            kept: a second baseline that isolates what the applications add to a forward;
  classify: ``classify.evaluate(session, rule, data)``: the document pass (pooled) and the
            rule's evaluation, overall and per language (the rule is fitted once before);
  overlap:  ``overlap.overlap(session, {first half, second half}, repeats=0)``: the document
            pass per dataset, the feature sets and the coverage matrix (no subsampling).

Throughput is tokens run through the model per second, each mode counting its own tokens (the
first token included; the statistics pass also runs the separators, the document pass no
padding). The modes run interleaved, ``--repeats`` times, in a rotating order; each mode's median
time is reported, and the overhead of a mode against a baseline is
``(baseline tokens/s / mode tokens/s - 1) * 100`` (goal: <= 10 % against ``stats``).

  python benchmarks/applications_throughput.py           # 480 documents, 5 repeats
  python benchmarks/applications_throughput.py --small   # 48 documents, 2 repeats (the test)

Writes ``benchmarks/results/applications_throughput.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "applications_throughput.json"
GOAL_PERCENT = 10.0
MODES = ("stats", "forward", "classify", "overlap")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="48 documents, 2 repeats")
    ap.add_argument("--documents", type=int, default=None, help="default 480 (small: 48)")
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (small: 2)")
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return ap.parse_args(argv)


def texts_and_labels(n: int) -> tuple[list[str], list[str]]:
    """Demo facts, office facts ("leader") and the others ("other") alternating."""
    from qwen_interp.apps.demo import facts
    leaders = [f.prompt + f.answer for f in facts.office_facts()]
    others = [f.prompt + f.answer for f in facts.filler_facts() + facts.unknown_facts()]
    texts, labels = [], []
    for i in range(n):
        pool, label = (leaders, "leader") if i % 2 == 0 else (others, "other")
        texts.append(pool[(i // 2) % len(pool)])
        labels.append(label)
    return texts, labels


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    n_docs = args.documents or (48 if args.small else 480)
    repeats = args.repeats or (2 if args.small else 5)
    from qwen_interp.apps import trace
    trace.start_demo(trace.DEFAULT_MODEL, trace.DEFAULT_TRANSCODER)
    import numpy as np
    import torch

    from qwen_interp.apps.applications import classify, overlap
    from qwen_interp.apps.applications.docpass import PassConfig, _forward, tokenize
    from qwen_interp.apps.applications.labelled import from_records
    from qwen_interp.apps.applications.model import ModelConfig, load_session
    from qwen_interp.apps.features.collect import RunConfig, first_token_id, shard_stats
    from qwen_interp.apps.features.corpus import iter_contexts
    config = ModelConfig(trace.DEFAULT_MODEL, trace.DEFAULT_TRANSCODER, demo=True)
    session = load_session(config, device="cpu")
    tokenizer = session.model.tokenizer
    first = first_token_id(tokenizer, config.model)
    texts, labels = texts_and_labels(n_docs)
    data = from_records([{"text": t, "label": y, "lang": "en"} for t, y in zip(texts, labels)])
    pass_config = PassConfig(batch_size=args.batch_size)

    # the statistics pass's contexts, packed from the same texts
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
        contexts = np.stack(list(iter_contexts(str(corpus), tokenizer, ctx_len=args.ctx_len,
                                               first_token_id=first,
                                               separator_token_id=first)))
    run_config = RunConfig(model=config.model, transcoder=config.transcoder, corpus="-",
                           ctx_len=args.ctx_len, batch_size=args.batch_size)
    ids, _ = tokenize(tokenizer, texts, first, pass_config.max_tokens)
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    doc_tokens = sum(len(x) for x in ids)

    def run_stats():
        shard_stats(session, contexts, 0, run_config)
        return int(contexts.size)

    def run_forward():
        for start in range(0, len(order), args.batch_size):
            members = order[start:start + args.batch_size]
            batch = torch.full((len(members), len(ids[members[0]])), first, dtype=torch.long)
            for row, i in enumerate(members):
                batch[row, :len(ids[i])] = torch.tensor(ids[i])
            _forward(session, batch)
        return doc_tokens

    rule = classify.fit(session, data, positive="leader", pass_config=pass_config,
                        model_config=config, progress=False)

    def run_classify():
        classify.evaluate(session, rule, data, pass_config=pass_config, model_config=config,
                          progress=False)
        return doc_tokens

    half = len(texts) // 2

    def run_overlap():
        overlap.overlap(session, {"a": texts[:half], "b": texts[half:]}, repeats=0,
                        pass_config=pass_config, model_config=config, progress=False)
        return doc_tokens

    runners = {"stats": run_stats, "forward": run_forward, "classify": run_classify,
               "overlap": run_overlap}
    for run in runners.values():  # warm-up: first-call allocations are not measured
        run()
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    tokens: dict[str, int] = {}
    for r in range(repeats):
        for k in range(len(MODES)):
            mode = MODES[(r + k) % len(MODES)]
            start = time.perf_counter()
            tokens[mode] = runners[mode]()
            seconds[mode].append(time.perf_counter() - start)
    results = {}
    for mode in MODES:
        median = statistics.median(seconds[mode])
        results[mode] = {"seconds": seconds[mode], "median_s": median, "tokens": tokens[mode],
                         "tokens_per_s": tokens[mode] / median}

    def overhead(mode: str, base: str) -> float:
        return (results[base]["tokens_per_s"] / results[mode]["tokens_per_s"] - 1) * 100
    record = {
        "benchmark": "applications_throughput",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(), "machine": platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
        "mode": "small" if args.small else "default", "documents": n_docs, "repeats": repeats,
        "batch_size": args.batch_size, "ctx_len": args.ctx_len,
        "dictionaries": list(classify.identity(session, config)["blocks"]),
        "rule": rule.describe(), "results": results,
        "overhead_percent": {"classify_vs_stats": overhead("classify", "stats"),
                             "overlap_vs_stats": overhead("overlap", "stats"),
                             "classify_vs_forward": overhead("classify", "forward"),
                             "overlap_vs_forward": overhead("overlap", "forward")},
        "goal_percent": GOAL_PERCENT,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    record["within_goal"] = all(record["overhead_percent"][k] <= GOAL_PERCENT
                                for k in ("classify_vs_stats", "overlap_vs_stats"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print("| mode | tokens | median s | tokens/s |\n|---|---|---|---|")
    for mode in MODES:
        r = results[mode]
        print(f"| {mode} | {r['tokens']} | {r['median_s']:.3f} | {r['tokens_per_s']:.0f} |")
    for key, value in record["overhead_percent"].items():
        print(f"overhead {key}: {value:+.1f} %")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
