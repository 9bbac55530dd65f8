"""PatchSet restores exactly what was there; import_watch fires after an import, whenever."""

from __future__ import annotations

import types

import pytest

from helpers import run_python
from qwen_interp.patching import PatchSet


def test_patchset_undo_restores_objects_and_order():
    mod = types.SimpleNamespace(f=len)
    names, aliases = ["a", "b"], {"a": ["x"]}
    p = PatchSet()
    p.setattr(mod, "f", sum)
    p.setattr(mod, "g", 1)            # did not exist
    p.append(names, "a")              # equal to an upstream item
    p.setitem(aliases, "a", ["x", "y"])
    p.setitem(aliases, "c", ["z"])    # did not exist
    p.setattr(mod, "h", "wrapper", restore="original")  # imported our wrapper by name
    assert names == ["a", "b", "a"] and mod.f is sum
    p.undo()
    assert mod.f is len and not hasattr(mod, "g") and mod.h == "original"
    assert names == ["a", "b"] and aliases == {"a": ["x"]}
    assert not p


@pytest.mark.subprocess
def test_import_watch_runs_after_import_and_at_once_if_imported():
    out = run_python("""
import sys
from qwen_interp import import_watch
seen = []
import_watch.when_imported("sys", lambda: seen.append("sys"))        # already imported
import_watch.when_imported("colorsys",
                           lambda: seen.append(sys.modules["colorsys"].rgb_to_hsv.__name__))
assert seen == ["sys"]
import colorsys
print(seen, import_watch.pending(), import_watch._finder in sys.meta_path)
""", env={"QWEN_INTERP_PLUGINS": ""})
    assert out.stdout.strip() == "['sys', 'rgb_to_hsv'] [] False"


def test_patchset_restores_the_class_dict_entry_not_a_bound_method():
    class Base:
        @classmethod
        def make(cls):
            return cls

        @staticmethod
        def helper():
            return "base"

        inherited = "from Base"

    class Child(Base):
        pass

    make, helper = vars(Base)["make"], vars(Base)["helper"]
    p = PatchSet()
    p.setattr(Base, "make", classmethod(lambda cls: ("patched", cls)))
    p.setattr(Base, "helper", staticmethod(lambda: "patched"))
    p.setattr(Child, "inherited", "patched")  # Child had no own entry
    assert Child.make() == ("patched", Child) and Child.inherited == "patched"
    p.undo()
    assert vars(Base)["make"] is make and vars(Base)["helper"] is helper
    assert Child.make() is Child  # bound to the subclass again, not to Base
    assert "inherited" not in vars(Child) and Child.inherited == "from Base"
