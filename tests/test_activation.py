"""Activation is idempotent, reversible and order-independent; plugins load through entry
points, can be limited by QWEN_INTERP_PLUGINS, and stand down where upstream already has a fix."""

from __future__ import annotations

import json

import pytest

from helpers import run_python

SNAPSHOT = """
import copy, json
import transformer_lens.supported_models as sm
import transformer_lens.loading_from_pretrained as lp
def snap():
    return dict(names=list(sm.OFFICIAL_MODEL_NAMES), aliases=copy.deepcopy(sm.MODEL_ALIASES),
                defaults=list(sm.DEFAULT_MODEL_ALIASES),
                funcs=[id(lp.get_official_model_name), id(lp.convert_hf_model_config)],
                same_objects=lp.OFFICIAL_MODEL_NAMES is sm.OFFICIAL_MODEL_NAMES)
"""


@pytest.mark.subprocess
def test_import_twice_and_deactivate_restore_upstream_exactly():
    out = run_python(SNAPSHOT + """
pristine = snap()
import importlib, qwen_interp
active = snap()
importlib.reload(qwen_interp)   # a second import
qwen_interp.activate()           # and an explicit second activation
again = snap()
qwen_interp.deactivate()
restored = snap()
qwen_interp.activate()
reactivated = snap()
qwen_interp.deactivate()
print(json.dumps(dict(pristine=pristine, active=active, again=again, restored=restored,
                      reactivated=reactivated, final=snap())))
""")
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert "Qwen/Qwen3-1.7B-Base" not in s["pristine"]["names"]
    assert "Qwen/Qwen3-1.7B-Base" in s["active"]["names"]
    assert s["again"] == s["active"]  # nothing registered twice
    assert len(s["active"]["names"]) == len(set(s["active"]["names"]))
    assert s["restored"] == s["pristine"]  # same lists, dicts and function objects
    without_funcs = lambda d: {k: v for k, v in d.items() if k != "funcs"}  # noqa: E731
    assert without_funcs(s["reactivated"]) == without_funcs(s["active"])
    assert s["active"]["funcs"] != s["pristine"]["funcs"]  # the loaders were wrapped
    assert s["final"] == s["pristine"]
    assert s["active"]["same_objects"]  # mutated in place, never rebound


@pytest.mark.subprocess
def test_import_order_does_not_matter():
    out = run_python("""
import sys, qwen_interp
assert "transformer_lens" not in sys.modules   # import qwen_interp stays cheap
from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES
print("Qwen/Qwen3-8B-Base" in OFFICIAL_MODEL_NAMES)
""")
    assert out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.subprocess
@pytest.mark.parametrize("allowed, expected", [
    ("", []), ("qwen3", ["qwen3"]),
    ("qwen3, transformerlens", ["qwen3", "transformerlens"])])
def test_env_var_limits_autoload(allowed, expected):
    out = run_python("""
import json, qwen_interp
from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES
print(json.dumps([qwen_interp.activation.state().plugin_names,
                  "Qwen/Qwen3-8B-Base" in OFFICIAL_MODEL_NAMES]))
""", env={"QWEN_INTERP_PLUGINS": allowed})
    names, patched = json.loads(out.stdout.strip().splitlines()[-1])
    assert names == expected
    assert patched == ("transformerlens" in expected and "qwen3" in expected)


@pytest.mark.subprocess
def test_stands_down_for_names_and_local_dirs_upstream_has():
    out = run_python(SNAPSHOT + """
import functools
# Pretend upstream already has 1.7B-Base and local-directory loading.
sm.OFFICIAL_MODEL_NAMES.append("Qwen/Qwen3-1.7B-Base")
original = lp.get_official_model_name
lp.get_official_model_name = lambda name: name if name.startswith("/") else original(name)
pristine = snap()
import dataclasses, qwen_interp
adapter = qwen_interp.registry().adapters["transformerlens"]
status = {s.part: dataclasses.asdict(s) for s in adapter.status()}
count = sm.OFFICIAL_MODEL_NAMES.count("Qwen/Qwen3-1.7B-Base")
wrapped_dirs = id(lp.get_official_model_name) != pristine["funcs"][0]
qwen_interp.deactivate()
print(json.dumps(dict(status=status, count=count, wrapped_dirs=wrapped_dirs,
                      restored=snap() == pristine)))
""")
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert s["count"] == 1
    assert not s["wrapped_dirs"]
    names = dict(section.split(": ", 1)
                 for section in s["status"]["model-names"]["detail"].split("; "))
    assert "Qwen/Qwen3-1.7B-Base" in names["already upstream"].split(", ")
    assert "Qwen/Qwen3-1.7B-Base" not in names["added"]
    assert s["status"]["local-dirs"]["state"] == "upstream", s["status"]  # stood down
    assert s["restored"]


@pytest.mark.subprocess
def test_hook_register_adapters_failing_adapter_is_undone_and_reported():
    out = run_python("""
import json, qwen_interp
from qwen_interp import hookimpl
from qwen_interp.patching import PatchSet

class Broken:
    name, module = "broken", "json"
    def __init__(self): self.patches = PatchSet()
    def activate(self, registry):
        self.patches.setattr(json, "dumps", None)
        raise RuntimeError("upstream changed")
    def deactivate(self): self.patches.undo()
    def status(self): return []

class Plugin:
    @hookimpl
    def register_adapters(register):
        register(Broken())

qwen_interp.register_plugin(Plugin)
print(json.dumps(qwen_interp.activation.state().adapter_errors))
""")
    errors = json.loads(out.stdout.strip().splitlines()[-1])  # json.dumps was restored
    assert errors == {"broken": "RuntimeError: upstream changed"}


def test_conflicting_plugin_is_refused_and_registry_kept():
    import qwen_interp
    from qwen_interp import hookimpl
    from qwen_interp.registry import RegistryError
    from qwen_interp.specs import ModelSpec
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES

    class Conflicting:
        @hookimpl
        def register_models(register):
            register(ModelSpec("Qwen/Qwen3-1.7B-Base", "Qwen3ForCausalLM", d_model=1, n_layers=1,
                               n_heads=1, n_kv_heads=1, d_head=1, d_mlp=1, tied_embeddings=True))

    before_models = dict(qwen_interp.registry().models)
    before_names = list(OFFICIAL_MODEL_NAMES)
    with pytest.raises(RegistryError, match="'qwen3' already registered"):
        qwen_interp.register_plugin(Conflicting, name="conflicting")
    assert qwen_interp.registry().models == before_models
    assert list(OFFICIAL_MODEL_NAMES) == before_names
    assert not qwen_interp.plugin_manager().has_plugin("conflicting")


@pytest.mark.subprocess
def test_plugin_imported_before_qwen_interp_is_registered_once_loaded():
    """`import qwen_interp_saelens` first: qwen_interp activates while that module is half
    imported; the plugin is registered when its import finishes, before the next import (so its
    adapter is armed for sae_lens) and at the next registry lookup."""
    out = run_python("""
import json
import qwen_interp_saelens
import sae_lens
import qwen_interp
reg = qwen_interp.registry()
print(json.dumps([len(reg.sae_releases), "saelens" in reg.adapters,
                  reg.adapters["saelens"].status()[0].state]))
""")
    n_releases, has_adapter, state = json.loads(out.stdout.strip().splitlines()[-1])
    assert n_releases == 14 and has_adapter
    assert state != "inactive"  # the adapter ran: sae_lens was imported after registration
