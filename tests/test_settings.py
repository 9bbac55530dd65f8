"""Settings: every ``QWEN_INTERP_*`` variable is declared once in ``qwen_interp.settings``,
documented in docs/settings.md, and parsed one way wherever it is read. Also: the code cites the
project's own docs, not notes outsiders cannot open."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from qwen_interp import settings
from qwen_interp.settings import SettingError

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"QWEN_INTERP_[A-Z0-9_]*[A-Z0-9]")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".txt", ".cfg", ""}
SETTINGS_DOC = ROOT / "docs" / "settings.md"


def text_files(*tops: str):
    for top in tops:
        path = ROOT / top
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        for f in files:
            if f.is_file() and f.suffix in TEXT_SUFFIXES and "__pycache__" not in f.parts:
                yield f


def names_mentioned(*tops: str) -> dict[str, set[str]]:
    """QWEN_INTERP_* name -> the files (relative) that mention it."""
    found: dict[str, set[str]] = {}
    for f in text_files(*tops):
        for name in NAME.findall(f.read_text(encoding="utf-8", errors="replace")):
            found.setdefault(name, set()).add(str(f.relative_to(ROOT)))
    return found


DECLARED = {s.name for s in settings.ALL}
SOURCE_TREE = ("src", "plugins", "patches", "benchmarks", ".ci", "README.md", "docs")


# --- declared, used, documented ------------------------------------------------------------------


def test_every_name_in_the_source_tree_is_declared():
    mentioned = names_mentioned(*SOURCE_TREE)
    undeclared = {n: sorted(files) for n, files in mentioned.items() if n not in DECLARED}
    assert not undeclared, f"declare these in src/qwen_interp/settings.py: {undeclared}"


def test_every_declared_setting_is_used_outside_settings_py():
    """Library settings are read by the library; a test-only one may instead be read by the test
    suite through its ``settings.<ATTRIBUTE>``."""
    own = {"src/qwen_interp/settings.py", "docs/settings.md"}
    mentioned = names_mentioned("src", "plugins", "patches", "benchmarks")
    test_code = "\n".join(f.read_text(encoding="utf-8") for f in (ROOT / "tests").rglob("*.py"))
    read_by_tests = {value.name for attribute, value in vars(settings).items()
                     if isinstance(value, settings.Setting) and value.test_only
                     and re.search(rf"\bsettings\.{attribute}\.get\(", test_code)}
    unused = sorted(n for n in DECLARED
                    if not mentioned.get(n, set()) - own and n not in read_by_tests)
    assert not unused, f"declared but read nowhere: {unused}"


def test_names_are_unique_prefixed_and_documented_in_full():
    names = [s.name for s in settings.ALL]
    assert len(names) == len(set(names))
    for s in settings.ALL:
        assert s.name.startswith(settings.PREFIX) and s.doc and s.kind and s.default_text
        assert s.test_only == s.name.startswith(settings.PREFIX + "TEST_"), s.name


def test_docs_table_is_the_declarations():
    text = SETTINGS_DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- settings-table: begin -->\n(.*?)<!-- settings-table: end -->",
                      text, re.S)
    assert match, "docs/settings.md lost its settings-table markers"
    assert match.group(1) == settings.markdown_table(), (
        "docs/settings.md is out of date; paste qwen_interp.settings.markdown_table():\n"
        + settings.markdown_table())
    rows = set(re.findall(r"^\| `(QWEN_INTERP_[A-Z0-9_]+)` \|", match.group(1), re.M))
    assert rows == DECLARED


def test_by_name():
    assert settings.by_name("QWEN_INTERP_FAST_LOAD") is settings.FAST_LOAD
    with pytest.raises(KeyError, match="QWEN_INTERP_FAST_LAOD"):
        settings.by_name("QWEN_INTERP_FAST_LAOD")


# --- one boolean parser, wherever a boolean is read ----------------------------------------------

def _reader(module: str, function: str):
    return getattr(importlib.import_module(module), function)


# Each boolean setting and the function its plugin reads it through (default True: on).
BOOLEAN_READERS = [
    (settings.BOUNDED_ATTRIBUTION, "qwen_interp_circuit_tracer.attribution", "enabled"),
    (settings.FAST_LOAD, "qwen_interp_transformerlens.fast_load", "enabled"),
    (settings.FAST_FORWARD, "qwen_interp_transformerlens.fast_forward", "enabled"),
    (settings.SAE_CACHE, "qwen_interp_saelens.files", "cache_enabled"),
]
OFF = ["0", "false", "FALSE", "no", "No", "off", " off "]
ON = ["1", "true", "True", "yes", "YES", "on", " on\n"]


@pytest.mark.parametrize("setting, module, function", BOOLEAN_READERS,
                         ids=[s.name for s, _, _ in BOOLEAN_READERS])
def test_boolean_settings_parse_one_way(monkeypatch, setting, module, function):
    read = _reader(module, function)
    monkeypatch.delenv(setting.name, raising=False)
    assert read() is True  # default
    for word in OFF:
        monkeypatch.setenv(setting.name, word)
        assert read() is False, word
    for word in ON:
        monkeypatch.setenv(setting.name, word)
        assert read() is True, word
    monkeypatch.setenv(setting.name, "")
    assert read() is True  # empty = unset
    for word in ("maybe", "2", "tru", "of"):
        monkeypatch.setenv(setting.name, word)
        with pytest.raises(SettingError) as info:
            read()
        assert str(info.value) == (f"{setting.name}={word!r}: expected one of 1, 0, true, false, "
                                   f"yes, no, on, off")


def test_bounded_attribution_and_fast_load_both_disable_with_false(monkeypatch):
    """The same word means the same thing for every switch (it once did not: only "0" turned
    bounded attribution off)."""
    attribution = _reader("qwen_interp_circuit_tracer.attribution", "enabled")
    fast_load = _reader("qwen_interp_transformerlens.fast_load", "enabled")
    monkeypatch.setenv("QWEN_INTERP_BOUNDED_ATTRIBUTION", "false")
    monkeypatch.setenv("QWEN_INTERP_FAST_LOAD", "false")
    assert attribution() is False and fast_load() is False


def test_debug_is_a_boolean_and_a_bad_value_is_one_cli_line(monkeypatch, capsys):
    import argparse

    from qwen_interp.apps import cli

    def failing_parser():
        def fail(args):
            raise ValueError("boom")
        parser = argparse.ArgumentParser()
        parser.add_subparsers(dest="command").add_parser("fail").set_defaults(func=fail)
        return parser

    monkeypatch.setattr(cli, "build_parser", failing_parser)
    for off in (None, "", "0", "off", "FALSE"):
        if off is None:
            monkeypatch.delenv("QWEN_INTERP_DEBUG", raising=False)
        else:
            monkeypatch.setenv("QWEN_INTERP_DEBUG", off)
        assert cli.main(["fail"]) == 1
        assert capsys.readouterr().err == "qwen-interp fail: error: boom\n"
    for on in ("1", "yes", "On"):
        monkeypatch.setenv("QWEN_INTERP_DEBUG", on)
        with pytest.raises(ValueError, match="boom"):
            cli.main(["fail"])
    monkeypatch.setenv("QWEN_INTERP_DEBUG", "maybe")
    assert cli.main(["fail"]) == 1
    assert capsys.readouterr().err == ("qwen-interp fail: error: QWEN_INTERP_DEBUG='maybe': "
                                       "expected one of 1, 0, true, false, yes, no, on, off\n")


# --- numbers, paths, names ----------------------------------------------------------------------


def test_n_ctx_is_a_whole_number_bounded_by_the_checkpoint(monkeypatch):
    from qwen_interp_transformerlens import default_n_ctx
    monkeypatch.delenv("QWEN_INTERP_N_CTX", raising=False)
    assert default_n_ctx(32768) == 2048 and default_n_ctx(1024) == 1024
    monkeypatch.setenv("QWEN_INTERP_N_CTX", " 4096 ")
    assert default_n_ctx(32768) == 4096
    monkeypatch.setenv("QWEN_INTERP_N_CTX", "40000")
    with pytest.raises(SettingError, match=r"QWEN_INTERP_N_CTX=40000: .*max_position_embeddings "
                                           r"\(32768\)"):
        default_n_ctx(32768)
    for bad in ("abc", "0", "-3", "1.5", "2k"):
        monkeypatch.setenv("QWEN_INTERP_N_CTX", bad)
        with pytest.raises(SettingError, match=f"QWEN_INTERP_N_CTX={bad!r}: expected a whole "
                                               f"number of tokens"):
            default_n_ctx(32768)


def test_megabyte_settings(monkeypatch):
    from qwen_interp_circuit_tracer.active_decoders import DEFAULT_WORKSPACE_BYTES
    from qwen_interp_circuit_tracer.attribution import workspace_bytes
    from qwen_interp_transformerlens.fast_load import DEFAULT_CHUNK_MB, chunk_bytes
    name = "QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB"
    monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("QWEN_INTERP_FAST_LOAD_CHUNK_MB", raising=False)
    assert workspace_bytes() == DEFAULT_WORKSPACE_BYTES
    assert settings.ATTRIBUTION_WORKSPACE_MB.default * 2**20 == DEFAULT_WORKSPACE_BYTES  # docs
    assert chunk_bytes() == DEFAULT_CHUNK_MB * 2**20
    monkeypatch.setenv(name, "0.5")
    assert workspace_bytes() == 2**19
    monkeypatch.setenv("QWEN_INTERP_FAST_LOAD_CHUNK_MB", "0.01")
    assert chunk_bytes() == int(0.01 * 2**20)
    for bad in ("lots", "0", "-1", "nan", "inf", "1e999"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(SettingError, match=re.escape(f"{name}={bad!r}: expected a number of "
                                                         f"MB greater than 0")):
            workspace_bytes()
        monkeypatch.setenv("QWEN_INTERP_FAST_LOAD_CHUNK_MB", bad)
        with pytest.raises(SettingError, match="QWEN_INTERP_FAST_LOAD_CHUNK_MB"):
            chunk_bytes()


def test_cache_path(monkeypatch, tmp_path):
    from qwen_interp.paths import cache_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for unset in (None, "", "  "):
        if unset is None:
            monkeypatch.delenv("QWEN_INTERP_CACHE", raising=False)
        else:
            monkeypatch.setenv("QWEN_INTERP_CACHE", unset)
        assert cache_root() == tmp_path / "xdg" / "qwen-interp"
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QWEN_INTERP_CACHE", "~/qi")
    assert cache_root() == tmp_path / "home" / "qi"


def test_plugins_list(monkeypatch):
    from qwen_interp.plugins import allowed_plugin_names
    monkeypatch.delenv("QWEN_INTERP_PLUGINS", raising=False)
    assert allowed_plugin_names() is None  # unset: all
    monkeypatch.setenv("QWEN_INTERP_PLUGINS", "")
    assert allowed_plugin_names() == set()  # empty: none (not "unset")
    monkeypatch.setenv("QWEN_INTERP_PLUGINS", " qwen3, ,transformerlens,")
    assert allowed_plugin_names() == {"qwen3", "transformerlens"}


# --- facts live in the project's docs ------------------------------------------------------------

CITATION = re.compile(r"\bFACTS(\.md)?\b|\b[Ii]ssues?\s+\d+")


def test_code_cites_the_projects_docs_not_private_notes():
    """No "FACTS.md §n" or "issue N" (team-internal notes nobody outside can open) in the shipped
    code: the fact itself, or a pointer into docs/."""
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
            for f in text_files("src", "plugins", "patches")
            for i, line in enumerate(f.read_text(encoding="utf-8", errors="replace")
                                     .splitlines(), 1)
            if CITATION.search(line)]
    assert not hits, "\n".join(hits)


def test_docs_the_code_points_at_exist():
    pointers = {m for f in text_files("src", "plugins", "patches", "tests")
                for m in re.findall(r"docs/[\w-]+\.md", f.read_text(encoding="utf-8",
                                                                     errors="replace"))}
    missing = sorted(p for p in pointers if not (ROOT / p).is_file())
    assert not missing, missing
