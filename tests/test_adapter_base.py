"""The core's adapter lifecycle (``qwen_interp.adapters``) and ``PatchSet.wrap``/``undo``, on
plain Python objects: arm, probe, apply, stand down, fail and undo, report as data, restore."""

from __future__ import annotations

import functools
import sys
import types

import pytest

from qwen_interp.adapters import (BRIDGED, FAILED, INACTIVE, UPSTREAM, AdapterBase,
                                  AlreadyUpstream, NothingToChange, Part, PartStatus)
from qwen_interp.patching import PatchConflict, PatchSet


def upstream_module(name: str) -> types.ModuleType:
    """A stand-in upstream module, already imported (as ``sys.modules`` holds it)."""
    mod = types.ModuleType(name)
    mod.greet = lambda who: f"hello {who}"
    mod.TABLE = {"a": 1}
    mod.NAMES = ["x"]
    sys.modules[name] = mod
    return mod


@pytest.fixture
def upstream():
    mod = upstream_module("qwen_interp_test_upstream")
    yield mod
    sys.modules.pop(mod.__name__, None)


def shout(original):
    @functools.wraps(original)
    def greet(who):
        return original(who).upper()
    return greet


class DemoAdapter(AdapterBase):
    name = "demo"
    module = "qwen_interp_test_upstream"

    def __init__(self, later_module: str = "qwen_interp_test_not_yet_imported") -> None:
        super().__init__()
        self.later_module = later_module

    def parts(self) -> list[Part]:
        mod = sys.modules[self.module]

        def wrap_greet(patches, registry):
            patches.wrap(mod, "greet", shout)
            return "greet shouts"

        def half_then_fail(patches, registry):
            patches.setitem(mod.TABLE, "b", 2)  # must be undone when the part fails
            patches.append(mod.NAMES, "y")
            raise RuntimeError("upstream changed under us")

        def already(patches, registry):
            raise AlreadyUpstream("upstream has TABLE['c']")

        def nothing(patches, registry):
            raise NothingToChange("no such class in this release")

        return [
            Part("greet", self.module, "greet() shouts", wrap_greet),
            Part("probe-says-upstream", self.module, "never applied", wrap_greet,
                 probe=lambda registry: True),
            Part("breaks", self.module, "adds TABLE['b']", half_then_fail),
            Part("already", self.module, "adds TABLE['c']", already),
            Part("nothing", self.module, "wraps a class", nothing),
            Part("later", self.later_module, "waits for its module", wrap_greet),
        ]


def states(adapter) -> dict[str, tuple[str, str]]:
    return {s.part: (s.state, s.detail) for s in adapter.status()}


def test_lifecycle_reports_one_status_per_part_as_data(upstream):
    original_greet, table, names = upstream.greet, dict(upstream.TABLE), list(upstream.NAMES)
    adapter = DemoAdapter()
    assert [s.state for s in adapter.status()] == [INACTIVE]  # not armed yet

    adapter.activate(registry=object())
    got = states(adapter)
    assert got["greet"] == (BRIDGED, "greet shouts")
    assert got["probe-says-upstream"] == (UPSTREAM, "upstream already has it")
    assert (got["breaks"][0] == FAILED
            and "RuntimeError: upstream changed under us" in got["breaks"][1])
    assert got["already"] == (UPSTREAM, "upstream has TABLE['c']")
    assert got["nothing"] == (INACTIVE, "no such class in this release")
    assert got["later"] == (INACTIVE, "qwen_interp_test_not_yet_imported not imported")
    assert [s.part for s in adapter.failures()] == ["breaks"]
    assert all(isinstance(s, PartStatus) and s.adapter == "demo" for s in adapter.status())
    assert adapter.modules() == ["qwen_interp_test_upstream", "qwen_interp_test_not_yet_imported"]

    # The bridged part changed upstream; the failed one left nothing behind.
    assert upstream.greet("qwen") == "HELLO QWEN"
    assert upstream.greet.__wrapped__ is original_greet
    assert upstream.TABLE == table and upstream.NAMES == names

    adapter.activate(registry=object())  # a second activation changes nothing
    assert upstream.greet.__wrapped__ is original_greet

    adapter.deactivate()
    assert upstream.greet is original_greet  # the very same object
    assert [s.state for s in adapter.status()] == [INACTIVE] and adapter.modules() == []


def test_a_part_applies_when_its_module_is_imported(upstream, tmp_path, monkeypatch):
    (tmp_path / "qwen_interp_test_late_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter = DemoAdapter(later_module="qwen_interp_test_late_module")
    adapter.activate(registry=None)
    assert states(adapter)["later"][0] == INACTIVE
    try:
        import qwen_interp_test_late_module  # noqa: F401 - the import arms the part
        assert states(adapter)["later"] == (BRIDGED, "greet shouts")
    finally:
        adapter.deactivate()
        sys.modules.pop("qwen_interp_test_late_module", None)


def test_wrap_keeps_the_original_and_undo_restores_it(upstream):
    original = upstream.greet
    patches = PatchSet()
    wrapper = patches.wrap(upstream, "greet", shout)
    assert upstream.greet is wrapper and wrapper.__wrapped__ is original
    patches.undo()
    assert upstream.greet is original
    assert not patches


def test_undo_never_clobbers_what_someone_else_put_there(upstream):
    original_greet = upstream.greet
    patches = PatchSet()
    patches.wrap(upstream, "greet", shout)
    patches.setattr(upstream, "extra", 1)  # absent before: undo removes it
    theirs = lambda who: "theirs"  # noqa: E731 - another tool replaced our wrapper
    upstream.greet = theirs
    with pytest.raises(PatchConflict, match=r"qwen_interp_test_upstream\.greet"):
        patches.undo()
    assert upstream.greet is theirs  # left as the other tool set it
    assert not hasattr(upstream, "extra")  # everything else was restored
    assert original_greet("x") == "hello x"
