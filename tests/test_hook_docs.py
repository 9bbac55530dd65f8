"""Meta tests, in the style of datasette's tests/test_docs.py: every hook has a pytest-grade
docstring and a section in docs/hooks.md, and tests/plugins/every_hook.py implements every hook
(tests/test_hook_api.py registers it and finds its records)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from qwen_interp import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "hooks.md"
EVERY_HOOK = Path(__file__).parent / "plugins" / "every_hook.py"
# What every hook's docstring says, in this order.
DOCSTRING_PARTS = ("Called ", ":param register:", "Example::", "Order and conflicts:", "Errors:")


def hook_names() -> list[str]:
    """The hookspecs, in source order."""
    return [name for name, fn in sorted(inspect.getmembers(hookspecs, inspect.isfunction),
                                        key=lambda item: item[1].__code__.co_firstlineno)
            if name.startswith("register_")]


def doc_sections() -> dict[str, str]:
    """``## `register_...` `` section title -> its text, in the page's order."""
    text = DOCS.read_text()
    parts = re.split(r"^## `(register_\w+)`\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_there_are_hooks():
    # The walk below really reads the hookspecs (a broken lookup would pass every check vacuously).
    assert {"register_models", "register_model_families", "register_adapters",
            "register_commands", "register_doctor_checks"} <= set(hook_names())
    assert len(hook_names()) >= 9


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_has_a_pytest_grade_docstring(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc and len(doc.splitlines()) >= 15, f"{name}: the docstring is too short"
    positions = [doc.find(part) for part in DOCSTRING_PARTS]
    assert -1 not in positions, f"{name}: missing {DOCSTRING_PARTS[positions.index(-1)]!r}"
    assert positions == sorted(positions), f"{name}: parts out of order {DOCSTRING_PARTS}"
    assert f"def {name}(register)" in doc, f"{name}: the example does not implement the hook"


def test_docs_have_one_section_per_hook_in_source_order():
    assert list(doc_sections()) == hook_names()


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_section_says_the_same_facts_with_a_worked_example(name):
    section = doc_sections()[name]
    for part in ("**Called**", "**Argument**", "**Order and conflicts**", "**Errors**",
                 "```python", "@hookimpl", f"def {name}(register):"):
        assert part in section, f"docs/hooks.md {name}: missing {part!r}"
    record_type = inspect.signature(getattr(hookspecs, name)).parameters["register"].annotation
    record = re.search(r"Callable\[\[(\w+)\]", str(record_type)).group(1)
    assert f"`{record}`" in section, f"docs/hooks.md {name}: does not name its record {record}"


def test_every_hook_plugin_implements_every_hook():
    tree = ast.parse(EVERY_HOOK.read_text())
    implemented = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                   and any("hookimpl" in ast.unparse(d) for d in node.decorator_list)}
    assert implemented == set(hook_names())


def test_docs_name_the_priority_rule_and_the_builtins():
    text = DOCS.read_text()
    for fact in ("tryfirst", "trylast", "most recently registered", "BUILTIN_PLUGINS",
                 "entry-point group", "check_pending", "later-registered"):
        assert fact in text, fact
