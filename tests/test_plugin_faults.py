"""Broken third-party plugins: each is skipped (or warned about), named and reported; none breaks
``import qwen_interp`` or ``qwen-interp doctor``, and the good plugins next to them still load.

The plugins are real installed distributions: a folder on ``PYTHONPATH`` holding the module and
a ``*.dist-info`` with ``entry_points.txt``, which ``importlib.metadata`` finds like any
pip-installed package. Everything runs in fresh interpreters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import run_python

HEADER = """
from qwen_interp import hookimpl
from qwen_interp.specs import ModelSpec

def spec(repo_id, d_model=256, aliases=()):
    return ModelSpec(repo_id, "Qwen3ForCausalLM", d_model=d_model, n_layers=4, n_heads=4,
                     n_kv_heads=2, d_head=64, d_mlp=768, tied_embeddings=True, aliases=aliases)
"""

# entry-point name -> module body (after HEADER)
PLUGINS = {
    "acme_a": """
@hookimpl
def register_models(register):
    register(spec("acme/Qwen3-Tiny-Base", aliases=("acme-tiny",)))
""",
    # Same repo id as acme_a, other facts: the later of the two is skipped.
    "acme_b": """
@hookimpl
def register_models(register):
    register(spec("acme/Qwen3-Tiny-Base", d_model=512))
""",
    # Sorts before every built-in plugin, yet built-ins load first: this one is the later.
    "aaa_shadow": """
@hookimpl
def register_models(register):
    register(spec("Qwen/Qwen3-1.7B-Base"))
""",
    "alias_thief": """
@hookimpl
def register_models(register):
    register(spec("thief/Qwen3-Tiny-Base", aliases=("qwen3-8b-base",)))
""",
    "boom": """
@hookimpl
def register_models(register):
    raise RuntimeError("boom")
""",
    "badtype": """
@hookimpl
def register_models(register):
    register(spec("bad/Qwen3-Tiny-Base", d_model="256"))
""",
    "notrecord": """
@hookimpl
def register_models(register):
    register({"repo_id": "bad/Qwen3-Dict"})
""",
    "badargs": """
@hookimpl
def register_models(reg):
    reg(spec("bad/Qwen3-Args"))
""",
    # A misspelled hook (pluggy's check_pending() refuses it) and a forgotten decorator: skipped.
    "typo": """
@hookimpl
def register_model(register):
    register(spec("typo/Qwen3-Tiny-Base"))

def register_sae_releases(register):
    pass
""",
    # A forgotten decorator alone: loaded, with a warning.
    "nodecorator": """
@hookimpl
def register_models(register):
    register(spec("nodeco/Qwen3-Tiny-Base"))

def register_sae_releases(register):
    pass
""",
    "broken_import": """
raise ImportError("needs a package that is not installed")
""",
}

SKIPPED = {
    "aaa_shadow": "plugin 'aaa_shadow' registers a model 'Qwen/Qwen3-1.7B-Base' that plugin "
                  "'qwen3' already registered differently",
    "acme_b": "plugin 'acme_b' registers a model 'acme/Qwen3-Tiny-Base' that plugin 'acme_a' "
              "already registered differently",
    "alias_thief": "plugin 'alias_thief' registers the name 'qwen3-8b-base' (for "
                   "'thief/Qwen3-Tiny-Base'; it is also 'Qwen/Qwen3-8B-Base''s) that plugin "
                   "'qwen3' already registered differently",
    "boom": "plugin 'boom': its register_models hook raised RuntimeError: boom",
    "badtype": "plugin 'badtype' registered a malformed model: ModelSpec.d_model must be int, "
               "got str '256'",
    "notrecord": "plugin 'notrecord' registered a malformed model: expected a ModelSpec, got "
                 "dict {'repo_id': 'bad/Qwen3-Dict'}",
    "broken_import": "failed to load: ImportError: needs a package that is not installed",
}
TYPO_PROBLEMS = [
    "@hookimpl 'register_model' matches no qwen-interp hook, so it is never called; did you mean "
    "'register_models'?",
    "'register_sae_releases' lacks the @qwen_interp.hookimpl decorator, so it is never called",
]
SKIPPED["typo"] = "plugin 'typo': " + "; ".join(TYPO_PROBLEMS)
NODECORATOR_WARNINGS = [
    "plugin 'nodecorator': 'register_sae_releases' lacks the @qwen_interp.hookimpl decorator, so "
    "it is never called",
]
BUILTINS = ["qwen3", "qwen35", "transformerlens", "circuit_tracer", "saelens"]  # the list's order


def install(root: Path, names) -> Path:
    for name in names:
        (root / f"{name}_plugin.py").write_text(HEADER + textwrap.dedent(PLUGINS[name]))
        dist = root / f"{name}_plugin-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[qwen_interp]\n{name} = {name}_plugin\n")
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return install(tmp_path_factory.mktemp("site"), PLUGINS)


STATE = """
import json, qwen_interp
st = qwen_interp.activation.state()
reg = qwen_interp.registry()
print(json.dumps(dict(names=st.plugin_names, skipped=st.skipped_plugins,
                      warnings=st.plugin_warnings, owners=reg.owners["models"],
                      d_model_17b=reg.model("Qwen/Qwen3-1.7B-Base").d_model,
                      alias_8b=reg.model("qwen3-8b-base").repo_id)))
"""


@pytest.fixture(scope="module")
def loaded(site):
    out = run_python(STATE, env={"PYTHONPATH": str(site)})
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.subprocess
def test_broken_plugins_are_skipped_and_named(loaded):
    state, _ = loaded
    assert state["skipped"] == {**SKIPPED, "badargs": state["skipped"]["badargs"]}
    assert state["skipped"]["badargs"].startswith(
        "refused by pluggy: PluginValidationError: Plugin 'badargs' for hook 'register_models' "
        "hookimpl definition: register_models(reg) Argument(s) {'reg'} are declared in the "
        "hookimpl but can not be found in the hookspec")


@pytest.mark.subprocess
def test_good_plugins_still_load(loaded):
    state, _ = loaded
    assert state["names"] == [*BUILTINS, "acme_a", "nodecorator"]
    assert state["owners"]["acme/Qwen3-Tiny-Base"] == "acme_a"  # the earlier of the conflict
    # The built-in records won over the third-party ones that conflicted with them.
    assert state["owners"]["Qwen/Qwen3-1.7B-Base"] == "qwen3" and state["d_model_17b"] == 2048
    assert state["alias_8b"] == "Qwen/Qwen3-8B-Base"
    assert not any(key.startswith(("bad/", "thief/", "typo/")) for key in state["owners"])
    assert state["owners"]["nodeco/Qwen3-Tiny-Base"] == "nodecorator"


@pytest.mark.subprocess
def test_misspelled_hook_is_skipped_and_missing_decorator_is_warned_about(loaded):
    state, stderr = loaded
    assert state["skipped"]["typo"] == SKIPPED["typo"]
    assert "typo" not in state["names"]
    assert state["warnings"] == NODECORATOR_WARNINGS
    for text in NODECORATOR_WARNINGS:
        assert f"qwen-interp: {text}" in stderr


@pytest.mark.subprocess
def test_each_skip_is_logged_once_at_import(loaded):
    _, stderr = loaded
    for name, why in SKIPPED.items():
        assert stderr.count(f"qwen-interp plugin {name!r} skipped: {why}") == 1, name


def doctor(env: dict) -> subprocess.CompletedProcess:
    """``qwen-interp doctor``, as a user types it."""
    script = Path(sys.executable).with_name("qwen-interp")
    return subprocess.run([str(script), "doctor"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


@pytest.mark.subprocess
def test_doctor_lists_skipped_plugins_and_warnings(site):
    proc = doctor({"PYTHONPATH": str(site)})
    assert proc.returncode == 1, proc.stderr  # problems found, reported, no traceback
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert f"plugins: {', '.join([*BUILTINS, 'acme_a', 'nodecorator'])}" in lines
    for name, why in SKIPPED.items():
        assert f"  SKIPPED plugin {name!r}: {why}" in lines
    for text in NODECORATOR_WARNINGS:
        assert f"  WARNING: {text}" in lines
    assert "upstream gaps bridged:" in lines  # the rest of the report still ran


@pytest.mark.subprocess
def test_unknown_names_in_plugin_env_var_are_reported(site):
    env = {"PYTHONPATH": str(site), "QWEN_INTERP_PLUGINS": "qwen3, acme_a, acme-a, nosuch"}
    want = ("QWEN_INTERP_PLUGINS names 'acme-a', 'nosuch', but no installed plugin has that "
            "name; installed: aaa_shadow, acme_a, acme_b, alias_thief, badargs, badtype, boom, "
            "broken_import, circuit_tracer, nodecorator, notrecord, qwen3, qwen35, saelens, "
            "transformerlens, typo")
    out = run_python(STATE, env=env)
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["names"] == ["qwen3", "acme_a"] and state["skipped"] == {}
    assert state["warnings"] == [want]
    assert f"qwen-interp: {want}" in out.stderr
    proc = doctor(env)
    assert proc.returncode == 1 and f"  WARNING: {want}" in proc.stdout.splitlines()


@pytest.mark.subprocess
def test_doctor_is_clean_without_broken_plugins():
    proc = doctor({})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SKIPPED" not in proc.stdout and "WARNING" not in proc.stdout


# --- run time: register_plugin raises one clear error and changes nothing -----------------------
def _runtime_plugin(body: str):
    namespace: dict = {}
    exec(HEADER + textwrap.dedent(body), namespace)  # noqa: S102 - the test's own plugin source
    return type("RuntimePlugin", (), {k: staticmethod(v) for k, v in namespace.items()
                                      if k.startswith("register_")})


@pytest.mark.parametrize("name, message", [
    ("acme_b", "plugin 'runtime-acme_b' registers a model 'acme/Qwen3-Tiny-Base' that plugin "
               "'runtime-acme_a' already registered differently"),
    ("boom", "plugin 'runtime-boom': its register_models hook raised RuntimeError: boom"),
    ("badtype", "plugin 'runtime-badtype' registered a malformed model: ModelSpec.d_model must be "
                "int, got str '256'"),
    ("typo", "plugin 'runtime-typo': " + "; ".join(TYPO_PROBLEMS)),
])
def test_register_plugin_at_run_time_raises_and_changes_nothing(name, message):
    import qwen_interp
    from qwen_interp.registry import RegistryError
    good = _runtime_plugin(PLUGINS["acme_a"])
    qwen_interp.register_plugin(good, name="runtime-acme_a")
    try:
        before = dict(qwen_interp.registry().models)
        with pytest.raises(RegistryError) as info:
            qwen_interp.register_plugin(_runtime_plugin(PLUGINS[name]), name=f"runtime-{name}")
        assert str(info.value) == message
        assert qwen_interp.registry().models == before
        assert not qwen_interp.plugin_manager().has_plugin(f"runtime-{name}")
    finally:
        qwen_interp.unregister_plugin(good)
