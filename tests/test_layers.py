"""The three layers, enforced: every import statement of every module, read from its source.

- core (``qwen_interp`` and its modules, except ``qwen_interp.apps``): imports no plugin and no
  app;
- plugins (one package per folder under ``plugins/``): import the core and their own upstream,
  never another plugin and never an app;
- apps (``qwen_interp.apps``, ``qwen_interp_pytest``): may import both.

Imports inside functions count too: a lazy import is still a dependency. The core names its
built-in plugins as strings (``plugins.BUILTIN_PLUGINS``, as llm and datasette do), which is data,
not an import; it names no app even as a string.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "src" / "qwen_interp"
APPS = CORE / "apps"
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file())
PLUGIN_NAMES = {p.name for p in PLUGINS}


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, base: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative imports resolved."""
    name = module_name(path, base)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from qwen_interp import apps` imports the apps package too.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def is_app(module: str) -> bool:
    return (module == "qwen_interp.apps" or module.startswith("qwen_interp.apps.")
            or module.split(".")[0] == "qwen_interp_pytest")


def is_plugin(module: str) -> bool:
    return module.split(".")[0] in PLUGIN_NAMES


def core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py")
                  if APPS not in p.parents and p.name != "__main__.py")


def test_the_layers_are_where_the_folders_say() -> None:
    assert PLUGIN_NAMES >= {"qwen_interp_qwen3", "qwen_interp_qwen35",
                            "qwen_interp_transformerlens", "qwen_interp_circuit_tracer",
                            "qwen_interp_saelens"}
    assert (APPS / "__init__.py").is_file()
    assert len(core_files()) >= 10  # the walk below really reads the core


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_the_core_imports_no_plugin_and_no_app(path: Path) -> None:
    bad = [(line, mod) for line, mod in imported_modules(path, ROOT / "src")
           if is_plugin(mod) or is_app(mod)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: the core imports no plugin or app"



@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_the_core_names_no_app_even_as_a_string(path: Path) -> None:
    """Not even for importlib: the apps register what they need themselves (the CLI's own
    commands live in the CLI), so the core works without them."""
    strings = [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and node.value.startswith(("qwen_interp.apps", "qwen_interp_pytest"))]
    assert not strings, f"{path.relative_to(ROOT)} names an app module: {strings}"

@pytest.mark.parametrize("path", sorted(p for d in PLUGINS for p in d.rglob("*.py")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_plugin_imports_the_core_and_its_upstream_only(path: Path) -> None:
    own = path.relative_to(ROOT / "plugins").parts[0]
    bad = [(line, mod) for line, mod in imported_modules(path, ROOT / "plugins")
           if is_app(mod) or (is_plugin(mod) and mod.split(".")[0] != own)]
    assert not bad, (f"{path.relative_to(ROOT)} imports {bad}: a plugin imports the core and "
                     "its upstream only, never another plugin or an app")


def test_the_import_walk_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function and a relative import are both found."""
    pkg = tmp_path / "qwen_interp"
    (pkg / "apps").mkdir(parents=True)
    source = ("def f():\n    from qwen_interp_saelens import steering\n"
              "from .apps import session\nfrom . import apps\n")
    (pkg / "core_mod.py").write_text(source)
    found = {mod for _, mod in imported_modules(pkg / "core_mod.py", tmp_path)}
    assert "qwen_interp_saelens" in found
    assert "qwen_interp.apps" in found and "qwen_interp.apps.session" in found
    assert any(is_plugin(m) for m in found) and any(is_app(m) for m in found)


@pytest.mark.subprocess
def test_importing_qwen_interp_imports_no_upstream_tool() -> None:
    """``import qwen_interp`` arms adapters and builds the registry only: torch and the three
    tools load when the user imports them (a second of every interpreter start otherwise)."""
    import subprocess
    import sys
    heavy = ("torch", "transformers", "transformer_lens", "circuit_tracer", "sae_lens", "nnsight")
    for setup in ("import qwen_interp; qwen_interp.registry()",
                  # the command line's parser (every command's arguments and defaults) too:
                  # `qwen-interp explore --no-model` or `doctor` must not pay for torch
                  "from qwen_interp.apps.cli import all_commands, build_parser; "
                  "build_parser(all_commands())"):
        code = f"import sys; {setup}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == "[]", setup + out.stdout + out.stderr
