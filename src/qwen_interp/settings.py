"""Every ``QWEN_INTERP_*`` environment variable, declared once and parsed one way.

Each :class:`Setting` reads ``os.environ`` when :meth:`Setting.get` is called, never at import,
so a value set later (a shell, ``monkeypatch.setenv``) counts from the next call. A value that
does not parse raises one :class:`SettingError` naming the variable, the value and what was
expected; nothing falls back silently.

One parser per kind of value:

- boolean: ``1/0``, ``true/false``, ``yes/no``, ``on/off``, any case, spaces around ignored;
- whole number: an integer within the setting's range;
- megabytes: a finite number > 0 (fractions allowed);
- path: ``~`` expanded;
- names: a comma-separated list; blanks around and empty items are dropped.

An empty (or all-blank) value means "unset" (the default), except for ``QWEN_INTERP_PLUGINS``,
where ``""`` means "load no plugin". ``docs/settings.md`` shows the table :func:`markdown_table`
renders; tests/test_settings.py keeps the two equal, and keeps this list equal to the
``QWEN_INTERP_*`` names the source tree mentions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

PREFIX = "QWEN_INTERP_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class SettingError(ValueError):
    """A ``QWEN_INTERP_*`` variable holds a value its setting cannot use."""


# --- parsers: each raises ValueError for a value it refuses -----------------------------------


def parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(raw)


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(raw)
        return value
    return parse


def parse_megabytes(raw: str) -> float:
    value = float(raw.strip())
    if not (math.isfinite(value) and value > 0):
        raise ValueError(raw)
    return value


def parse_path(raw: str) -> Path:
    return Path(raw.strip()).expanduser()


def parse_names(raw: str) -> frozenset[str]:
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


BOOL_EXPECTED = "one of " + ", ".join(w for pair in zip(TRUE_WORDS, FALSE_WORDS, strict=True)
                                      for w in pair)


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: its name, how it parses, its default, and what it does.

    ``kind`` and ``default_text`` are what the documentation shows; ``expected`` completes the
    error message "NAME='value': expected ...". ``test_only`` settings are read by qwen-interp's
    pytest plugin or its own test suite, never by the library.
    """

    name: str
    kind: str
    parse: Callable[[str], T]
    expected: str
    default: T
    default_text: str
    doc: str
    test_only: bool = False
    blank_is_unset: bool = True

    def raw(self) -> str | None:
        """The variable's text as set, or None when it counts as unset."""
        raw = os.environ.get(self.name)
        if raw is None or (self.blank_is_unset and not raw.strip()):
            return None
        return raw

    def is_set(self) -> bool:
        return self.raw() is not None

    def get(self) -> T:
        """The parsed value, read from the environment now; the default when unset."""
        raw = self.raw()
        if raw is None:
            return self.default
        try:
            return self.parse(raw)
        except ValueError:
            raise SettingError(f"{self.name}={raw!r}: expected {self.expected}") from None


def boolean(name: str, default: bool, doc: str) -> Setting[bool]:
    return Setting(name, "boolean", parse_bool, BOOL_EXPECTED, default, str(int(default)), doc)


def megabytes(name: str, default: float, doc: str) -> Setting[float]:
    return Setting(name, "megabytes", parse_megabytes, "a number of MB greater than 0", default,
                   f"{default:g}", doc)


ATTRIBUTION_WORKSPACE_MB = megabytes(
    PREFIX + "ATTRIBUTION_WORKSPACE_MB", 256,
    "The largest scratch block of one bounded attribution step (scoring, reconstruction, "
    "ranking) in circuit-tracer.")
BOUNDED_ATTRIBUTION = boolean(
    PREFIX + "BOUNDED_ATTRIBUTION", True,
    "circuit-tracer's `attribute()` with bounded memory (same graph); off: circuit-tracer's own "
    "memory layout.")
CACHE: Setting[Path | None] = Setting(
    PREFIX + "CACHE", "path", parse_path, "a folder path", None,
    "`$XDG_CACHE_HOME/qwen-interp`, else `~/.cache/qwen-interp`",
    "qwen-interp's cache folder: `clt/` converted transcoders, `saes/` converted SAE layers, "
    "`demo-hf/` the demo's offline Hub.")
DEBUG = boolean(
    PREFIX + "DEBUG", False,
    "The CLI shows the traceback of a failure instead of its one-line message.")
FAST_FORWARD = boolean(
    PREFIX + "FAST_FORWARD", True,
    "The faster `HookedTransformer` forward for Qwen3 models (same hooks); off: "
    "TransformerLens's own forward.")
FAST_LOAD = boolean(
    PREFIX + "FAST_LOAD", True,
    "Dense Qwen3 checkpoints load into `HookedTransformer` straight from safetensors; off: "
    "TransformerLens's own loading.")
FAST_LOAD_CHUNK_MB = megabytes(
    PREFIX + "FAST_LOAD_CHUNK_MB", 128,
    "The largest block the fast loader processes at once (e.g. the fp32 unembedding).")
N_CTX: Setting[int | None] = Setting(
    PREFIX + "N_CTX", "whole number", whole_number(1),
    "a whole number of tokens, at least 1 and at most the checkpoint's "
    "max_position_embeddings", None,
    "2048 (TransformerLens's value), capped at the checkpoint's `max_position_embeddings`",
    "Default `n_ctx` of Qwen3 models in TransformerLens, up to the checkpoint's "
    "`max_position_embeddings` (checked when a model loads); `from_pretrained(..., n_ctx=N)` "
    "also works.")
PLUGINS: Setting[frozenset[str] | None] = Setting(
    PREFIX + "PLUGINS", "names", parse_names,
    "comma-separated plugin names (a built-in's short name or an entry-point name)", None,
    "unset: every installed plugin",
    "Plugins to load, comma-separated: a built-in's short name (`qwen3`, `qwen35`, "
    "`transformerlens`, `circuit_tracer`, `saelens`) or a third-party entry-point name; "
    "`\"\"` loads none.",
    blank_is_unset=False)
SAE_CACHE = boolean(
    PREFIX + "SAE_CACHE", True,
    "Qwen-Scope layers read from their pickles are cached as safetensors; off: read safely, "
    "not cached.")
TEST_HF_HOME: Setting[Path | None] = Setting(
    PREFIX + "TEST_HF_HOME", "path", parse_path, "a folder path", None,
    "a new temporary folder per pytest session",
    "The HF cache the offline-Hub pytest plugin builds, kept between runs when set.",
    test_only=True)

TEST_ARTIFACTS: Setting[Path | None] = Setting(
    PREFIX + "TEST_ARTIFACTS", "path", parse_path, "a folder path", None,
    "`test-artifacts/` in the repository",
    "Where the browser tests save their screenshots (under `explorer/`), checked non-blank.",
    test_only=True)
TEST_README_IMAGES: Setting[Path | None] = Setting(
    PREFIX + "TEST_README_IMAGES", "path", parse_path, "a folder path", None,
    "unset: no copies",
    "The browser tests also write the README's Explorer screenshots there (`docs/images`).",
    test_only=True)

ALL: tuple[Setting[Any], ...] = (
    ATTRIBUTION_WORKSPACE_MB, BOUNDED_ATTRIBUTION, CACHE, DEBUG, FAST_FORWARD, FAST_LOAD,
    FAST_LOAD_CHUNK_MB, N_CTX, PLUGINS, SAE_CACHE, TEST_HF_HOME, TEST_ARTIFACTS,
    TEST_README_IMAGES)


def by_name(name: str) -> Setting[Any]:
    """The setting of one variable name, e.g. ``"QWEN_INTERP_FAST_LOAD"``."""
    for setting in ALL:
        if setting.name == name:
            return setting
    raise KeyError(f"{name!r} is not a qwen-interp setting; known: "
                   f"{', '.join(s.name for s in ALL)}")


def markdown_table() -> str:
    """The table of every setting, as docs/settings.md shows it."""
    rows = ["| variable | kind | default | effect |", "|---|---|---|---|"]
    for s in ALL:
        doc = f"(tests only) {s.doc}" if s.test_only else s.doc
        rows.append(f"| `{s.name}` | {s.kind} | {s.default_text} | {doc} |")
    return "\n".join(rows) + "\n"
