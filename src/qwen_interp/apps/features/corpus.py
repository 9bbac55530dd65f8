"""Stream a text corpus and pack it into fixed-length token contexts for the feature-statistics
pass, deterministically: the same corpus always gives the same contexts in the same order, so
shards of the context sequence computed by different processes line up.

Sources (:func:`resolve_sources`):

- a ``.txt`` file (one document per line), a ``.jsonl``/``.json`` file (JSON Lines: one object per
  line, the text in ``text_field``) or a ``.parquet`` file (the ``text_field`` column);
- a directory: every such file under it, recursively, in order of relative path (hidden files and
  folders, and files of other types, are left out);
- a folder written by ``datasets``' ``save_to_disk`` (read with ``load_from_disk``);
- ``hf:NAME``, ``hf:NAME:SPLIT`` or ``hf:NAME:CONFIG:SPLIT`` (split ``train`` by default): a
  Hugging Face dataset from the LOCAL cache only, never downloaded: first the cache an earlier
  ``datasets.load_dataset(NAME)`` prepared (what ``load_dataset`` itself reads offline), else the
  files of a Hub snapshot (``hf download --repo-type dataset NAME``), streamed in the split's order.
  NAME may also be a local folder (a ``save_to_disk`` folder or a dataset repository's files).

Documents that are empty or whitespace-only, or that cannot be read as text (invalid UTF-8, a bad
JSON line, a missing, null or non-string text field, lone surrogates), are skipped and counted in
a :class:`CorpusReport`.

Packing (:func:`iter_contexts`): every context is ``[first_token_id]`` followed by the next
``ctx_len - 1`` tokens of the stream ``doc1 + [sep] + doc2 + [sep] + doc3 ...`` (documents
tokenized without special tokens). A document longer than a context continues in the next one;
the tokens after the last full context are dropped (and counted). Position 0 holds a special
token because circuit-tracer's attribution graphs do so and zero the features at that position:
Qwen has no BOS token, and circuit-tracer prepends ``<|endoftext|>`` (id 151643); statistics
gathered over contexts shaped the same way describe the features the graphs show. The separator
(also ``<|endoftext|>`` for Qwen) marks document boundaries as in pretraining.
"""

from __future__ import annotations

import json
import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from qwen_interp.errors import InputError

TEXT_SUFFIXES = (".txt",)
JSON_LINES_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSON_LINES_SUFFIXES + PARQUET_SUFFIXES
HF_PREFIX = "hf:"
DEFAULT_SPLIT = "train"

# Rows per Arrow batch: bounds memory with long documents (a Parquet default of 64K rows of
# 10 kB documents would hold 640 MB).
_ROWS_PER_BATCH = 1024
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class CorpusReport:
    """Counts for the run's report (JSON-serializable with ``dataclasses.asdict``). The readers
    add to the counts, so one report can gather a whole run."""

    sources: list[str]  # files (resolved, sorted) or the dataset spec, in reading order
    documents: int = 0  # documents used
    skipped_empty: int = 0  # empty / whitespace-only documents
    skipped_undecodable: int = 0  # invalid UTF-8 or JSON, text missing, null or not a string
    tokens: int = 0  # document tokens packed (without separators / first tokens)
    contexts: int = 0  # contexts yielded
    dropped_tail_tokens: int = 0  # stream tokens after the last full context (not used)
    # Progress, for an ETA: the sources' sizes in bytes, and how much of them has been read
    # (Parquet files and datasets: their size times the fraction of rows read).
    input_bytes: int = 0
    input_bytes_read: int = 0


# --- sources ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """One unit of reading: a file, or a loaded ``datasets.Dataset``."""

    name: str
    read: Callable[[CorpusReport], Iterator[str]]
    size: int  # bytes (a dataset: its Arrow data)


def resolve_sources(source: str, *, text_field: str = "text") -> list[str]:
    """The sources ``source`` stands for, in reading order: resolved file paths, or the dataset
    spec. Checks everything that can be checked cheaply (files exist, suffixes, Parquet and
    dataset columns) and raises one clear error naming the problem."""
    return [s.name for s in _resolve(source, text_field)]


def _resolve(source: str | os.PathLike, text_field: str) -> list[_Source]:
    if not isinstance(text_field, str) or not text_field:
        raise InputError(f"text_field={text_field!r}: expected the non-empty name of the text "
                         "field or column")
    spec = os.fspath(source)
    if spec.startswith(HF_PREFIX):
        return _resolve_hf(spec, text_field)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"corpus source {spec}: no such file or directory (expected a "
                                f"{'/'.join(SUPPORTED_SUFFIXES)} file, a directory of them, or "
                                f"{HF_PREFIX}NAME[:CONFIG][:SPLIT] for a Hugging Face dataset)")
    path = path.resolve()
    if path.is_dir():
        if _is_saved_dataset(path):
            return [_saved_dataset_source(path, DEFAULT_SPLIT, str(path), text_field)]
        return _directory_sources(path, text_field)
    return [_file_source(path, text_field)]


def _file_source(path: Path, text_field: str) -> _Source:
    suffix = path.suffix.lower()
    size = path.stat().st_size
    if suffix in TEXT_SUFFIXES:
        return _Source(str(path), lambda report: _read_text_file(path, report), size)
    if suffix in JSON_LINES_SUFFIXES:
        if suffix == ".json":
            _check_json_lines(path)
        return _Source(str(path), lambda report: _read_json_lines(path, text_field, report),
                       size)
    if suffix in PARQUET_SUFFIXES:
        _check_parquet(path, text_field)
        return _Source(str(path), lambda report: _read_parquet(path, text_field, report, size),
                       size)
    raise InputError(f"corpus file {path}: unsupported type {path.suffix or '(no suffix)'!r}; "
                     f"expected one of {', '.join(SUPPORTED_SUFFIXES)} (.json is read as JSON "
                     "Lines)")


def _directory_sources(folder: Path, text_field: str) -> list[_Source]:
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue  # .git, .cache and editor files are not part of a corpus
        if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
            found.append((relative.as_posix(), path))
    if not found:
        raise InputError(f"corpus directory {folder} holds no {'/'.join(SUPPORTED_SUFFIXES)} "
                         "file (searched recursively, hidden files left out)")
    return [_file_source(path, text_field) for _, path in sorted(found)]


def _check_json_lines(path: Path) -> None:
    """A ``.json`` file may be one JSON document rather than JSON Lines; its lines would all be
    counted undecodable, so refuse it up front (the first non-blank line must be an object)."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                first = json.loads(raw.decode("utf-8-sig"))
            except ValueError:
                first = None
            if not isinstance(first, dict):
                raise InputError(f"corpus file {path} is not JSON Lines: its first line is not "
                                 "a JSON object (expected one object per line, e.g. "
                                 '{"text": "..."}; a single JSON document or array is not '
                                 "read)")
            return


def _check_parquet(path: Path, text_field: str) -> None:
    import pyarrow.parquet as pq
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"corpus file {path} is not a readable Parquet file: {exc}") from None
    _check_column(f"corpus file {path}", text_field, schema.names,
                  schema.field(text_field).type if text_field in schema.names else None)


def _check_column(what: str, text_field: str, columns: list[str], arrow_type) -> None:
    if text_field not in columns:
        raise InputError(f"{what} has no column {text_field!r}; its columns are "
                         f"{', '.join(map(repr, columns)) or 'none'} (choose one with "
                         "text_field)")
    if arrow_type is not None and not _is_textual(arrow_type):
        raise InputError(f"{what}: column {text_field!r} holds {arrow_type}, expected strings")


def _is_textual(arrow_type) -> bool:
    t = pa.types
    return (t.is_string(arrow_type) or t.is_large_string(arrow_type)
            or t.is_binary(arrow_type) or t.is_large_binary(arrow_type)
            or getattr(t, "is_string_view", lambda _: False)(arrow_type))


# --- Hugging Face datasets -------------------------------------------------------------------
def _parse_hf(spec: str) -> tuple[str, str | None, str]:
    parts = spec[len(HF_PREFIX):].split(":")
    if len(parts) > 3 or not all(parts):
        raise InputError(f"corpus source {spec!r}: expected hf:NAME, hf:NAME:SPLIT or "
                         "hf:NAME:CONFIG:SPLIT (split 'train' by default)")
    if len(parts) == 1:
        return parts[0], None, DEFAULT_SPLIT
    if len(parts) == 2:
        return parts[0], None, parts[1]
    return parts[0], parts[1], parts[2]


def _resolve_hf(spec: str, text_field: str) -> list[_Source]:
    name, config, split = _parse_hf(spec)
    local = Path(name).expanduser()
    if local.is_dir():
        local = local.resolve()
        if _is_saved_dataset(local):
            return [_saved_dataset_source(local, split, spec, text_field)]
        return _repository_sources(local, config, split, spec, text_field)
    if not _HUB_ID.match(name):
        raise FileNotFoundError(f"corpus source {spec!r}: {name} is neither a local folder nor "
                                "a Hugging Face dataset id (owner/name)")
    prepared = _prepared_hub_dataset(name, config, split, spec)
    if prepared is not None:
        return [_dataset_source(prepared, spec, text_field)]
    snapshot = _hub_snapshot(name)
    if snapshot is not None:
        return _repository_sources(snapshot, config, split, spec, text_field)
    import datasets
    from huggingface_hub import constants
    raise FileNotFoundError(
        f"corpus source {spec!r}: dataset {name} is not in the local Hugging Face cache (looked "
        f"for a prepared dataset in {datasets.config.HF_DATASETS_CACHE} and a Hub snapshot in "
        f"{constants.HF_HUB_CACHE}); nothing is downloaded: fetch it once online with "
        f"datasets.load_dataset({name!r}) or `hf download --repo-type dataset {name}`")


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
            or (folder / "dataset_dict.json").is_file())


def _saved_dataset_source(folder: Path, split: str, name: str, text_field: str) -> _Source:
    import datasets
    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InputError(f"corpus source {name}: saved dataset {folder} has no split "
                             f"{split!r}; its splits are {', '.join(map(repr, loaded))}")
        loaded = loaded[split]
    return _dataset_source(loaded, name, text_field)


def _prepared_hub_dataset(name: str, config: str | None, split: str, spec: str):
    """The dataset an earlier ``load_dataset(name)`` prepared in the ``datasets`` cache, read
    through the builder ``load_dataset`` itself uses offline; None if there is none."""
    from datasets.packaged_modules.cache.cache import Cache
    try:
        builder = Cache(repo_id=name, dataset_name=name.split("/")[-1], config_name=config,
                        version="auto", hash="auto")
    except ValueError as exc:
        if str(exc).startswith("Couldn't find cache"):
            return None
        raise InputError(f"corpus source {spec!r}: {exc}") from None
    try:
        return builder.as_dataset(split=split)
    except (ValueError, KeyError) as exc:
        raise InputError(f"corpus source {spec!r}: {exc}") from None


def _hub_snapshot(name: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        return Path(snapshot_download(name, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def _repository_sources(folder: Path, config: str | None, split: str, spec: str,
                        text_field: str) -> list[_Source]:
    """The files of ``split`` in a dataset repository's folder, found as ``datasets`` finds them
    (the README's configs, else its default split patterns), streamed by this module's readers
    rather than converted to an Arrow copy first."""
    import datasets
    try:
        builder = datasets.load_dataset_builder(str(folder), config)
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(f"corpus source {spec!r}: {folder}: {exc}") from None
    data_files = builder.config.data_files or {}
    if split not in data_files:
        raise InputError(f"corpus source {spec!r}: no split {split!r} in {folder}; its splits "
                         f"are {', '.join(map(repr, data_files)) or 'none'}")
    return [_file_source(Path(f), text_field) for f in data_files[split]]


def _dataset_source(dataset, name: str, text_field: str) -> _Source:
    import datasets
    feature = dataset.features.get(text_field)
    dtype = getattr(feature, "dtype", None) if isinstance(feature, datasets.Value) else None
    _check_column(f"corpus source {name}", text_field, list(dataset.column_names), None)
    if dtype not in ("string", "large_string", "binary", "large_binary", "string_view"):
        raise InputError(f"corpus source {name}: column {text_field!r} holds {feature}, "
                         "expected strings")
    size = max(1, int(dataset.data.nbytes))
    return _Source(name, lambda report: _read_dataset(dataset, text_field, report, size), size)


# --- readers ---------------------------------------------------------------------------------
def _accept(value: Any, report: CorpusReport) -> str | None:
    """``value`` as a document, or None after counting why it is skipped."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            value = None
    elif isinstance(value, str):
        try:
            value.encode("utf-8")  # lone surrogates (from JSON escapes) are not text
        except UnicodeEncodeError:
            value = None
    else:
        value = None  # null, a number, a list, ...
    if value is None:
        report.skipped_undecodable += 1
        return None
    if not value or value.isspace():
        report.skipped_empty += 1
        return None
    report.documents += 1
    return value


def _lines(path: Path, report: CorpusReport) -> Iterator[bytes]:
    """The lines of ``path`` as bytes, without their newline (``\\n`` or ``\\r\\n``) and without
    a UTF-8 byte-order mark at the start of the file."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            report.input_bytes_read += len(raw)
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if i == 0 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield raw


def _read_text_file(path: Path, report: CorpusReport) -> Iterator[str]:
    for raw in _lines(path, report):
        doc = _accept(raw, report)
        if doc is not None:
            yield doc


def _read_json_lines(path: Path, text_field: str, report: CorpusReport) -> Iterator[str]:
    for raw in _lines(path, report):
        if not raw.strip():
            report.skipped_empty += 1
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError:  # invalid UTF-8 or invalid JSON
            report.skipped_undecodable += 1
            continue
        if not isinstance(record, dict) or text_field not in record:
            report.skipped_undecodable += 1
            continue
        doc = _accept(record[text_field], report)
        if doc is not None:
            yield doc


def _column_values(column) -> list:
    """A text column's values as bytes (decoded strictly by :func:`_accept`), so one invalid
    UTF-8 value skips one document instead of failing the whole batch."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = column.cast(pa.large_binary())  # same layout: no copy, no validation
    return column.to_pylist()


def _read_arrow_batches(batches: Iterable, report: CorpusReport, size: int,
                        rows: int) -> Iterator[str]:
    for batch in batches:
        report.input_bytes_read += round(size * batch.num_rows / max(rows, 1))
        for value in _column_values(batch.column(0)):
            doc = _accept(value, report)
            if doc is not None:
                yield doc


def _read_parquet(path: Path, text_field: str, report: CorpusReport, size: int
                  ) -> Iterator[str]:
    import pyarrow.parquet as pq
    with pq.ParquetFile(path) as parquet:
        yield from _read_arrow_batches(
            parquet.iter_batches(batch_size=_ROWS_PER_BATCH, columns=[text_field]), report,
            size, parquet.metadata.num_rows)


def _read_dataset(dataset, text_field: str, report: CorpusReport, size: int
                  ) -> Iterator[str]:
    # Arrow format: slices of the memory-mapped table, no Python copy of other columns.
    column = dataset.select_columns([text_field]).with_format("arrow")
    yield from _read_arrow_batches(column.iter(batch_size=_ROWS_PER_BATCH), report, size,
                                   dataset.num_rows)


def iter_documents(source: str, *, text_field: str = "text",
                   report: CorpusReport | None = None) -> Iterator[str]:
    """The documents of ``source`` in order, skipping (and counting in ``report``) empty and
    undecodable ones. The source is resolved and checked when this is called, before the first
    document is read; ``report.sources`` is set then."""
    sources = _resolve(source, text_field)
    if report is None:
        report = CorpusReport(sources=[])
    report.sources = [s.name for s in sources]
    report.input_bytes = sum(s.size for s in sources)
    return _chain(sources, report)


def _chain(sources: list[_Source], report: CorpusReport) -> Iterator[str]:
    for source in sources:
        yield from source.read(report)


# --- packing ---------------------------------------------------------------------------------
def _token_id(value: Any, what: str, vocab_size: int | None) -> int:
    try:
        token = operator.index(value)
    except TypeError:
        raise InputError(f"{what}={value!r}: expected an integer token id") from None
    if token < 0 or (vocab_size is not None and token >= vocab_size):
        raise InputError(f"{what}={token}: not a token id of the tokenizer (0 to "
                         f"{'...' if vocab_size is None else vocab_size - 1})")
    return token


def iter_contexts(source: str, tokenizer, *, ctx_len: int, first_token_id: int,
                  separator_token_id: int, text_field: str = "text",
                  report: CorpusReport | None = None,
                  tokenize_batch: int = 256) -> Iterator[np.ndarray]:
    """Contexts of ``ctx_len`` tokens (int32): ``first_token_id``, then the next ``ctx_len - 1``
    tokens of ``doc1 + [separator] + doc2 + [separator] + ...``. Documents are tokenized without
    special tokens, ``tokenize_batch`` at a time. Arguments and the source are checked when this
    is called; memory stays bounded by one batch of documents."""
    if isinstance(ctx_len, bool) or not isinstance(ctx_len, int) or ctx_len < 2:
        raise InputError(f"ctx_len={ctx_len!r}: expected an integer >= 2 (position 0 holds "
                         "first_token_id, so a context needs at least one corpus token)")
    if isinstance(tokenize_batch, bool) or not isinstance(tokenize_batch, int) \
            or tokenize_batch < 1:
        raise InputError(f"tokenize_batch={tokenize_batch!r}: expected an integer >= 1")
    vocab_size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    first = _token_id(first_token_id, "first_token_id", vocab_size)
    separator = _token_id(separator_token_id, "separator_token_id", vocab_size)
    if report is None:
        report = CorpusReport(sources=[])
    documents = iter_documents(source, text_field=text_field, report=report)
    return _pack(_tokenized(documents, tokenizer, tokenize_batch, report), ctx_len, first,
                 separator, report)


def _tokenized(documents: Iterator[str], tokenizer, batch_size: int,
               report: CorpusReport) -> Iterator[list[list[int]]]:
    batch: list[str] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == batch_size:
            yield _tokenize(batch, tokenizer, report)
            batch = []
    if batch:
        yield _tokenize(batch, tokenizer, report)


def _tokenize(texts: list[str], tokenizer, report: CorpusReport) -> list[list[int]]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    report.tokens += sum(len(one) for one in ids)
    return ids


def _pack(batches: Iterator[list[list[int]]], ctx_len: int, first: int, separator: int,
          report: CorpusReport) -> Iterator[np.ndarray]:
    body = ctx_len - 1
    pending = np.empty(0, dtype=np.int32)  # stream tokens not yet in a context (< body)
    separator_array = np.array([separator], dtype=np.int32)
    started = False
    for ids in batches:
        pieces = [pending]
        for one in ids:
            if started:
                pieces.append(separator_array)
            pieces.append(np.asarray(one, dtype=np.int32))
            started = True
        stream = np.concatenate(pieces)
        full = len(stream) // body
        for i in range(full):
            context = np.empty(ctx_len, dtype=np.int32)
            context[0] = first
            context[1:] = stream[i * body:(i + 1) * body]
            report.contexts += 1
            yield context
        pending = stream[full * body:].copy()
    report.dropped_tail_tokens += len(pending)
