"""Labelled documents (``text``, ``label``, optional ``lang``) from JSON Lines, CSV or Parquet.

- ``.jsonl`` / ``.json``: one JSON object per line; blank lines are skipped.
- ``.csv``: a header row naming the columns (Python's ``csv`` dialect ``excel``: commas, quotes).
- ``.parquet``: columns by name.
- ``.txt`` (only where labels are optional, e.g. ``classify predict``): one text per line.

A label may be a string, an integer or a boolean and is kept as a string (``1``, ``true``); the
language, when present, is a string, else ``und`` (BCP 47's "undetermined"). Every problem (a
missing or empty text, a missing label, a bad JSON line, a file with no rows) is one
``ValueError`` naming the file and the line (Parquet: the row, counted from 1), so a dataset
row never vanishes silently.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNDETERMINED = "und"
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class LabelledData:
    texts: list[str]
    labels: list[str | None]  # None where the file has no labels (predict)
    langs: list[str]
    source: str = ""
    lines: list[int] = field(default_factory=list)  # where each row is in the file (1-based)

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> Counter:
        return Counter(self.labels)

    def subset(self, rows) -> LabelledData:
        rows = [int(i) for i in rows]
        return LabelledData([self.texts[i] for i in rows], [self.labels[i] for i in rows],
                            [self.langs[i] for i in rows], self.source,
                            [self.lines[i] for i in rows] if self.lines else [])

    def where(self, i: int) -> str:
        """``file:line`` of row ``i``, for error messages."""
        return f"{self.source}:{self.lines[i]}" if self.lines else f"{self.source} row {i + 1}"


def from_records(records: list[dict], *, source: str = "records", text_field: str = "text",
                 label_field: str = "label", lang_field: str = "lang",
                 require_labels: bool = True) -> LabelledData:
    """Labelled data from Python dicts (the same checks as a file)."""
    data = LabelledData([], [], [], source)
    for i, record in enumerate(records, 1):
        _add(data, record, f"{source} row {i}", i, text_field, label_field, lang_field,
             require_labels)
    return _finish(data, source)


def read_labelled(path: str | Path, *, text_field: str = "text", label_field: str = "label",
                  lang_field: str = "lang", require_labels: bool = True) -> LabelledData:
    """The rows of ``path`` (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    data = LabelledData([], [], [], str(path))
    fields = (text_field, label_field, lang_field, require_labels)
    if suffix in (".jsonl", ".json"):
        for number, record in _json_lines(path):
            _add(data, record, f"{path}:{number}", number, *fields)
    elif suffix == ".csv":
        for number, record in _csv_rows(path, text_field):
            _add(data, record, f"{path}:{number}", number, *fields)
    elif suffix == ".parquet":
        for number, record in _parquet_rows(path, text_field):
            _add(data, record, f"{path} row {number}", number, *fields)
    elif suffix == ".txt" and not require_labels:
        with open(path, encoding="utf-8", errors="strict") as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    _add(data, {text_field: line}, f"{path}:{number}", number, *fields)
    else:
        kinds = ", ".join(SUFFIXES if require_labels else (*SUFFIXES, ".txt"))
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r} "
                         f"(expected {kinds})")
    return _finish(data, str(path))


def _finish(data: LabelledData, source: str) -> LabelledData:
    if not data.texts:
        raise ValueError(f"{source}: no rows")
    return data


def _json_lines(path: Path):
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{number}: not UTF-8 text") from None
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not a JSON object ({exc.args[0]})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got "
                                 f"{type(record).__name__}")
            yield number, record


def _csv_rows(path: Path, text_field: str):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise ValueError(f"{path}: no rows")
            if text_field not in reader.fieldnames:
                raise ValueError(f"{path}:1: no {text_field!r} column (columns: "
                                 f"{', '.join(reader.fieldnames)})")
            for record in reader:
                if None in record:  # more cells than the header names
                    raise ValueError(f"{path}:{reader.line_num}: more cells than columns")
                yield reader.line_num, {k: v for k, v in record.items() if v is not None}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: bad CSV ({exc})") from None


def _parquet_rows(path: Path, text_field: str):
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a Parquet file ({' '.join(str(exc).split())})") from None
    if text_field not in table.column_names:
        raise ValueError(f"{path}: no {text_field!r} column (columns: "
                         f"{', '.join(table.column_names)})")
    for number, record in enumerate(table.to_pylist(), 1):
        yield number, {k: v for k, v in record.items() if v is not None}


def _add(data: LabelledData, record: dict[str, Any], where: str, number: int, text_field: str,
         label_field: str, lang_field: str, require_labels: bool) -> None:
    text = record.get(text_field)
    if not isinstance(text, str):
        what = "no" if text is None else f"a non-string ({type(text).__name__})"
        raise ValueError(f"{where}: {what} {text_field!r} field")
    if not text.strip():
        raise ValueError(f"{where}: empty {text_field!r}")
    label = record.get(label_field)
    if label is None or label == "":
        if require_labels:
            raise ValueError(f"{where}: no {label_field!r} field")
        label = None
    elif isinstance(label, bool):
        label = "true" if label else "false"
    elif isinstance(label, (int, str)):
        label = str(label).strip()
    else:
        raise ValueError(f"{where}: {label_field!r} must be a string, integer or boolean, got "
                         f"{type(label).__name__}")
    lang = record.get(lang_field)
    if lang is not None and not isinstance(lang, str):
        raise ValueError(f"{where}: {lang_field!r} must be a string, got {type(lang).__name__}")
    data.texts.append(text)
    data.labels.append(label)
    data.langs.append(lang.strip() if lang and lang.strip() else UNDETERMINED)
    data.lines.append(number)
