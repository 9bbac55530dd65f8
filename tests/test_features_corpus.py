"""The corpus reader of the feature-statistics pass: every format gives the same documents, the
packing equals an independent per-document reference with the genuine Qwen tokenizer, skipped
documents are counted, and bad input fails with one error naming the thing.

Hugging Face datasets are read from the session's private offline cache (the qwen-interp pytest
plugin sets HF_HOME and HF_HUB_OFFLINE=1 before ``datasets`` is imported, so its cache paths
point there); nothing is downloaded."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qwen_interp.apps.features.corpus import (
    CorpusReport,
    iter_contexts,
    iter_documents,
    resolve_sources,
)
from qwen_interp.apps.testing.hub import qwen_tokenizer_dir

EOT = 151643  # <|endoftext|>
IM_END = 151645  # <|im_end|>: a second special id, to tell first token and separator apart

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "Émigré naïve café — 東京の天気 🚀 ∑x²",
    "tab\tinside, and \"quotes\" and a backslash \\ too",
    "x",
    "def f(x):    return x * 2  # code with runs of spaces",
]
# Long enough to span several 16-token contexts.
LONG_DOC = " ".join(f"word{i} and some more text number {i}," for i in range(30))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


# --- writers ---------------------------------------------------------------------------------
def write_txt(path: Path, docs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{d}\n" for d in docs).encode())
    return path


def write_jsonl(path: Path, docs, field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(docs)),
                    encoding="utf-8")
    return path


def write_parquet(path: Path, docs, field: str = "text", row_group_size: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(len(docs))), field: docs})
    pq.write_table(table, path, row_group_size=row_group_size)  # several row groups
    return path


def reference_contexts(docs, tokenizer, ctx_len, first, separator):
    """Tokenize each document on its own, join with separators, cut into windows."""
    stream: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            stream.append(separator)
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
    body = ctx_len - 1
    n = len(stream) // body
    return [[first] + stream[i * body:(i + 1) * body] for i in range(n)], len(stream) - n * body


# --- Hugging Face cache fixtures -------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_cache(qwen_offline_hub):
    """The session's offline HF cache, after checking that ``datasets`` reads from it."""
    import datasets
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    hf_home = Path(qwen_offline_hub.hf_home)
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(hf_home)
    return qwen_offline_hub


def hub_snapshot_dataset(hub, repo_id: str, splits: dict[str, list[list]]) -> Path:
    """A dataset repo as `hf download --repo-type dataset` leaves it in the Hub cache:
    data/{split}-0000k-of-0000n.parquet under snapshots/<commit>, refs/main."""
    def write(folder: Path) -> None:
        for split, shards in splits.items():
            for k, docs in enumerate(shards):
                write_parquet(folder / "data" / f"{split}-{k:05d}-of-{len(shards):05d}.parquet",
                              docs)
    return hub.snapshot(repo_id, write, repo_type="dataset")


def prepared_hub_dataset(tmp_path: Path, repo_id: str, splits: dict[str, list]) -> None:
    """The ``datasets`` cache an online ``load_dataset(repo_id)`` of a Parquet repo leaves:
    {namespace}___{name}/default/0.0.0/<hash>/{name}-{split}.arrow + dataset_info.json, written
    by the same Parquet builder (from local files, as there is no network)."""
    import datasets
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet
    namespace, name = repo_id.split("/")
    name = camelcase_to_snakecase(name)
    final = Path(datasets.config.HF_DATASETS_CACHE) / f"{namespace}___{name}"
    if final.is_dir():  # a reused QWEN_INTERP_TEST_HF_HOME: same content
        return
    data_files = {split: [str(write_parquet(tmp_path / "src" / f"{split}.parquet", docs))]
                  for split, docs in splits.items()}
    build = tmp_path / "build"
    builder = Parquet(cache_dir=str(build), dataset_name=name, data_files=data_files,
                      hash="0123456789abcdef")
    builder.download_and_prepare()
    # A Hub dataset's config is "default"; local data_files give it a hashed suffix.
    (config,) = (build / name).iterdir()
    config.rename(config.with_name("default"))
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(build / name), str(final))


# --- formats ---------------------------------------------------------------------------------
def test_every_format_gives_the_same_documents(tmp_path, hf_cache):
    import datasets
    sources = {
        "txt": write_txt(tmp_path / "c.txt", DOCS),
        "jsonl": write_jsonl(tmp_path / "c.jsonl", DOCS),
        "json": write_jsonl(tmp_path / "c.json", DOCS),
        "parquet": write_parquet(tmp_path / "c.parquet", DOCS),
    }
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))}).save_to_disk(saved)
    saved_dict = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS}),
                          "test": datasets.Dataset.from_dict({"text": ["held out"]})}
                         ).save_to_disk(saved_dict)
    hub_snapshot_dataset(hf_cache, "qwen-interp-tests/corpus-snapshot",
                         {"train": [DOCS[:4], DOCS[4:]], "test": [["held out"]]})
    prepared_hub_dataset(tmp_path, "qwen-interp-tests/corpus-prepared",
                         {"train": DOCS, "test": ["held out"]})
    # The fixture is the layout `datasets` itself reads offline.
    assert list(datasets.load_dataset("qwen-interp-tests/corpus-prepared",
                                      split="train")["text"]) == DOCS

    for spec in [*map(str, sources.values()), str(saved), f"hf:{saved}", str(saved_dict),
                 f"hf:{saved_dict}:train", "hf:qwen-interp-tests/corpus-snapshot",
                 "hf:qwen-interp-tests/corpus-snapshot:default:train",
                 "hf:qwen-interp-tests/corpus-prepared",
                 "hf:qwen-interp-tests/corpus-prepared:train"]:
        report = CorpusReport(sources=[])
        assert list(iter_documents(spec, report=report)) == DOCS, spec
        assert (report.documents, report.skipped_empty, report.skipped_undecodable) == (
            len(DOCS), 0, 0), spec

    for spec in (f"hf:{saved_dict}:test", "hf:qwen-interp-tests/corpus-snapshot:test",
                 "hf:qwen-interp-tests/corpus-prepared:test"):
        assert list(iter_documents(spec)) == ["held out"], spec

    # A Hub snapshot is streamed from its files, in the split's order.
    snapshot_files = resolve_sources("hf:qwen-interp-tests/corpus-snapshot")
    assert [Path(f).name for f in snapshot_files] == ["train-00000-of-00002.parquet",
                                                      "train-00001-of-00002.parquet"]
    assert resolve_sources("hf:qwen-interp-tests/corpus-prepared") == [
        "hf:qwen-interp-tests/corpus-prepared"]
    assert resolve_sources(sources["txt"].parent / "c.txt") == [str(sources["txt"].resolve())]


# --- packing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ctx_len", [2, 16, 17])
def test_packing_equals_per_document_reference(tmp_path, tokenizer, ctx_len):
    docs = [DOCS[0], LONG_DOC, *DOCS[1:], "a final short one"]
    path = write_jsonl(tmp_path / "c.jsonl", docs)
    expected, tail = reference_contexts(docs, tokenizer, ctx_len, EOT, IM_END)
    long_tokens = len(tokenizer(LONG_DOC, add_special_tokens=False)["input_ids"])
    if ctx_len == 17:  # the cases the packing must get right are all there (16: no tail)
        assert long_tokens > 2 * (ctx_len - 1) and tail > 0

    for tokenize_batch in (1, 3, 256):
        report = CorpusReport(sources=[])
        contexts = list(iter_contexts(str(path), tokenizer, ctx_len=ctx_len,
                                      first_token_id=EOT, separator_token_id=IM_END,
                                      report=report, tokenize_batch=tokenize_batch))
        assert all(c.dtype == np.int32 and c.shape == (ctx_len,) for c in contexts)
        assert [c.tolist() for c in contexts] == expected, tokenize_batch
        n_tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
        assert asdict(report) == {
            "sources": [str(path.resolve())], "documents": len(docs), "skipped_empty": 0,
            "skipped_undecodable": 0, "tokens": n_tokens, "contexts": len(expected),
            "dropped_tail_tokens": tail, "input_bytes": path.stat().st_size,
            "input_bytes_read": path.stat().st_size}
        # Every stream token is in a context or in the dropped tail.
        assert (report.contexts * (ctx_len - 1) + report.dropped_tail_tokens
                == report.tokens + report.documents - 1)


def test_same_contexts_from_every_format(tmp_path, tokenizer):
    docs = [*DOCS, LONG_DOC]
    kwargs = dict(ctx_len=24, first_token_id=EOT, separator_token_id=EOT)
    runs = [[c.tolist() for c in iter_contexts(str(p), tokenizer, **kwargs)]
            for p in (write_txt(tmp_path / "c.txt", docs),
                      write_parquet(tmp_path / "c.parquet", docs),
                      write_jsonl(tmp_path / "c.jsonl", docs))]
    assert runs[0] and runs[0] == runs[1] == runs[2]
    assert runs[0] == reference_contexts(docs, tokenizer, 24, EOT, EOT)[0]


def test_empty_corpus_gives_no_context(tmp_path, tokenizer):
    path = write_txt(tmp_path / "blank.txt", ["", "   "])
    report = CorpusReport(sources=[])
    assert list(iter_contexts(str(path), tokenizer, ctx_len=8, first_token_id=EOT,
                              separator_token_id=EOT, report=report)) == []
    assert (report.documents, report.skipped_empty, report.contexts,
            report.dropped_tail_tokens) == (0, 2, 0, 0)


# --- skipped documents -----------------------------------------------------------------------
def test_txt_counts_empty_and_undecodable_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfgood one\n"        # a byte-order mark is not text
                     b"\xff\xfe invalid utf-8\n"
                     b"\n"
                     b"   \t \n"
                     b"\xed\xa0\x80 an encoded surrogate\n"
                     b"  spaces kept  \r\n"
                     b"last line without newline")
    report = CorpusReport(sources=[])
    assert list(iter_documents(str(path), report=report)) == [
        "good one", "  spaces kept  ", "last line without newline"]
    assert (report.documents, report.skipped_empty, report.skipped_undecodable) == (3, 2, 2)


def test_json_lines_count_bad_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [b'{"text": "a"}', b'{not json', b'{"other": "x"}', b'{"text": 5}',
             b'{"text": null}', b'{"text": "\\ud800 lone surrogate"}', b'{"text": ""}',
             b'{"text": "  \\n "}', b'[1, 2]', b'"just a string"', b'',
             b'{"text": "\xff invalid utf-8"}', b'{"text": "b", "id": 3}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = CorpusReport(sources=[])
    assert list(iter_documents(str(path), report=report)) == ["a", "b"]
    assert (report.documents, report.skipped_empty, report.skipped_undecodable) == (2, 3, 8)


def test_parquet_counts_nulls_and_invalid_utf8(tmp_path):
    raw = [b"p1", None, b"", b" \n ", b"\xff\xfe", "café".encode(), b"p2"]
    # .view: Arrow strings without UTF-8 validation, as a foreign writer may leave them.
    column = pa.array(raw, type=pa.binary()).view(pa.string())
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": column}), path, row_group_size=3)
    report = CorpusReport(sources=[])
    assert list(iter_documents(str(path), report=report)) == ["p1", "café", "p2"]
    assert (report.documents, report.skipped_empty, report.skipped_undecodable) == (3, 2, 2)


# --- directories -----------------------------------------------------------------------------
def test_directory_reads_supported_files_by_relative_path(tmp_path):
    root = tmp_path / "corpus"
    # Created out of order; read in order of relative path.
    write_txt(root / "b.txt", ["from b.txt"])
    write_jsonl(root / "a" / "z.jsonl", ["from a/z.jsonl"])
    write_jsonl(root / "c.json", ["from c.json"])
    write_parquet(root / "a" / "b.parquet", ["from a/b.parquet", "again a/b.parquet"])
    write_txt(root / "a.txt", ["from a.txt"])
    (root / "README.md").write_text("not a corpus file")
    write_txt(root / ".hidden" / "h.txt", ["hidden"])
    write_txt(root / ".h.txt", ["hidden"])

    order = ["a.txt", "a/b.parquet", "a/z.jsonl", "b.txt", "c.json"]
    expected_sources = [str((root / rel).resolve()) for rel in order]
    assert resolve_sources(str(root)) == expected_sources
    report = CorpusReport(sources=[])
    assert list(iter_documents(str(root), report=report)) == [
        "from a.txt", "from a/b.parquet", "again a/b.parquet", "from a/z.jsonl", "from b.txt",
        "from c.json"]
    assert report.sources == expected_sources and report.documents == 6


# --- bad input -------------------------------------------------------------------------------
def test_bad_input_fails_with_one_clear_error(tmp_path, tokenizer, hf_cache):
    import datasets
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        resolve_sources(str(missing))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        iter_documents(str(missing))  # at the call, before anything is read

    csv = tmp_path / "corpus.csv"
    csv.write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"corpus\.csv.*'\.csv'.*\.txt, \.jsonl, \.json, "
                                         r"\.parquet"):
        resolve_sources(str(csv))

    no_column = write_parquet(tmp_path / "body.parquet", ["x"], field="body")
    with pytest.raises(ValueError, match=r"body\.parquet has no column 'text'; its columns are "
                                         r"'id', 'body'"):
        resolve_sources(str(no_column))
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(ValueError, match=r"numbers\.parquet: column 'text' holds int64"):
        resolve_sources(str(numbers))

    array_json = tmp_path / "array.json"
    array_json.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=1))
    with pytest.raises(ValueError, match=r"array\.json is not JSON Lines"):
        resolve_sources(str(array_json))

    empty_dir = tmp_path / "empty"
    (empty_dir / "sub").mkdir(parents=True)
    (empty_dir / "notes.md").write_text("x")
    with pytest.raises(ValueError, match="empty holds no"):
        resolve_sources(str(empty_dir))

    good = write_txt(tmp_path / "good.txt", DOCS)
    for ctx_len in (1, 0, 2.5):
        with pytest.raises(ValueError, match=rf"ctx_len={ctx_len!r}: expected an integer >= 2"):
            iter_contexts(str(good), tokenizer, ctx_len=ctx_len, first_token_id=EOT,
                          separator_token_id=EOT)  # at the call, not at the first context
    with pytest.raises(ValueError, match=r"separator_token_id=999999"):
        iter_contexts(str(good), tokenizer, ctx_len=8, first_token_id=EOT,
                      separator_token_id=999999)
    with pytest.raises(ValueError, match=r"text_field=''"):
        resolve_sources(str(good), text_field="")

    saved = tmp_path / "saved_body"
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(saved)
    with pytest.raises(ValueError, match=r"no column 'text'; its columns are 'body'"):
        resolve_sources(f"hf:{saved}")
    with pytest.raises(ValueError, match=r"hf:NAME:CONFIG:SPLIT"):
        resolve_sources("hf:a:b:c:d")
    with pytest.raises(FileNotFoundError, match=r"qwen-interp-tests/absent is not in the local "
                                                r"Hugging Face cache.*nothing is downloaded"):
        resolve_sources("hf:qwen-interp-tests/absent")
    hub_snapshot_dataset(hf_cache, "qwen-interp-tests/corpus-splits", {"train": [["t"]]})
    with pytest.raises(ValueError, match=r"no split 'validation'.*'train'"):
        resolve_sources("hf:qwen-interp-tests/corpus-splits:validation")


def test_progress_reaches_the_corpus_size(tmp_path):
    """input_bytes_read grows while reading (the ETA of `features compute` rests on it) and ends
    at input_bytes: exactly for text files, within a byte per batch for Parquet."""
    docs = [f"document number {i} " * (1 + i % 7) for i in range(3000)]
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_txt(folder / "a.txt", docs)
    write_parquet(folder / "b.parquet", docs, row_group_size=500)
    report = CorpusReport(sources=[])
    seen = []
    for i, _ in enumerate(iter_documents(str(folder), report=report)):
        if i % 1000 == 0:
            seen.append(report.input_bytes_read)
    total = (folder / "a.txt").stat().st_size + (folder / "b.parquet").stat().st_size
    assert report.input_bytes == total
    assert seen == sorted(seen) and 0 < seen[1] < total
    assert abs(report.input_bytes_read - total) <= 3000 // 1024 + 1
