"""The hook layer as a public API: hooks run in pluggy's order (``tryfirst`` / ``trylast``
honoured), a misspelled hook is refused at load (pluggy's ``check_pending()``), built-ins load
from the core's explicit list, and every hook's records reach the registry, the command line and
``qwen-interp doctor`` (through ``tests/plugins/every_hook.py``)."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_python
from qwen_interp import hookimpl
from qwen_interp.registry import RegistryError
from qwen_interp.specs import Command, DoctorCheck, TranscoderFormat

PLUGINS_DIR = Path(__file__).parent / "plugins"
BUILTIN_FORMATS = ["bluelight_native", "circuit_tracer_hub"]


@pytest.fixture
def every_hook():
    """tests/plugins/every_hook.py, imported as a module."""
    sys.path.insert(0, str(PLUGINS_DIR))
    try:
        import every_hook
        yield every_hook
    finally:
        sys.path.remove(str(PLUGINS_DIR))


@pytest.fixture
def registered():
    """``registered(plugin, name)``: register_plugin now, unregister at the end of the test."""
    import qwen_interp
    done = []

    def register(plugin, name):
        qwen_interp.register_plugin(plugin, name=name)
        done.append(plugin)
        return plugin
    yield register
    for plugin in reversed(done):
        qwen_interp.unregister_plugin(plugin)


def format_plugin(name: str, **opts):
    """A plugin registering one transcoder format that recognises every folder."""
    class Plugin:
        @hookimpl(**opts)
        def register_transcoder_formats(register):
            register(TranscoderFormat(name, detect=lambda path: True, load=lambda path, **kw: None))
    return Plugin


# --- call order ---------------------------------------------------------------------------------
def test_tryfirst_and_trylast_are_honoured_and_third_party_comes_before_builtins(registered):
    import qwen_interp
    registered(format_plugin("last", trylast=True), "fmt-last")
    registered(format_plugin("first", tryfirst=True), "fmt-first")
    registered(format_plugin("plain_a"), "fmt-plain-a")
    registered(format_plugin("plain_b"), "fmt-plain-b")
    # tryfirst first, trylast last, otherwise the most recently registered plugin first; the
    # built-ins were registered before every third-party plugin.
    assert list(qwen_interp.registry().transcoder_formats) == [
        "first", "plain_b", "plain_a", *BUILTIN_FORMATS, "last"]


def test_hook_register_transcoder_formats_tryfirst_format_wins_detection(
        tmp_path, qwen_offline_hub, qwen_registry, registered):
    """A third-party format marked tryfirst recognises a folder the built-in
    ``circuit_tracer_hub`` format also recognises: circuit-tracer's loader uses it."""
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    from qwen_interp_circuit_tracer.formats import is_hub_layout, load_hub_layout
    release = qwen_registry.transcoder_release("bluelight-qwen3-1.7b")
    hub_folder = qwen_offline_hub.transcoder(release, qwen_registry.model(release.model_repo_id))
    assert is_hub_layout(Path(hub_folder))
    calls = []

    def load(path, **kwargs):
        calls.append(Path(path))
        return load_hub_layout(path, **kwargs)

    class AcmeFirst:
        @hookimpl(tryfirst=True)
        def register_transcoder_formats(register):
            register(TranscoderFormat("acme_first", detect=is_hub_layout, load=load))

    class AcmeLast:  # recognises the folder too, but is consulted after the built-ins
        @hookimpl(trylast=True)
        def register_transcoder_formats(register):
            register(TranscoderFormat("acme_last", detect=is_hub_layout, load=load))

    registered(AcmeLast, "acme-last")
    _, config = load_transcoder_from_hub(str(hub_folder), device=torch.device("cpu"),
                                         dtype=torch.float32)
    assert config["format"] == "circuit_tracer_hub" and calls == []
    registered(AcmeFirst, "acme-first")
    clt, config = load_transcoder_from_hub(str(hub_folder), device=torch.device("cpu"),
                                           dtype=torch.float32)
    assert config["format"] == "acme_first" and calls == [Path(hub_folder)]
    assert clt.W_enc.shape[0] == 3  # the small 1.7B stand-in's layers


def test_conflicts_blame_the_later_registered_plugin_whatever_the_call_order(registered):
    """pluggy calls the later plugin first; the error still names it as the one to blame."""
    first = registered(format_plugin("shared"), "fmt-earlier")

    class Other:
        @hookimpl(trylast=True)
        def register_transcoder_formats(register):
            register(TranscoderFormat("shared", detect=lambda p: False, load=lambda p, **k: None))

    import qwen_interp
    with pytest.raises(RegistryError) as info:
        qwen_interp.register_plugin(Other, name="fmt-later")
    assert info.value.plugins == ("fmt-earlier", "fmt-later")
    assert str(info.value) == ("plugin 'fmt-later' registers a transcoder format 'shared' that "
                               "plugin 'fmt-earlier' already registered differently")
    assert qwen_interp.plugin_manager().is_registered(first)


def test_a_hook_wrapper_is_refused():
    import qwen_interp

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_models(register):
            return (yield)

    with pytest.raises(RegistryError, match="plugin 'wrapper': its register_models hook is a "
                                            "wrapper"):
        qwen_interp.register_plugin(Wrapper, name="wrapper")
    assert not qwen_interp.plugin_manager().has_plugin("wrapper")


# --- check_pending ------------------------------------------------------------------------------
def test_misspelled_hook_is_refused_at_load_and_pluggy_agrees():
    from qwen_interp import plugins

    class Typo:
        @hookimpl
        def register_model(register):
            pass

    pm = plugins.new_plugin_manager()
    skipped, warnings = {}, []
    assert not plugins.register_checked(pm, Typo, "typo", skipped, warnings)
    assert skipped == {"typo": "plugin 'typo': @hookimpl 'register_model' matches no qwen-interp "
                               "hook, so it is never called; did you mean 'register_models'?"}
    assert not pm.has_plugin("typo") and warnings == []
    pm.check_pending()  # nothing of the refused plugin is left
    pm.register(Typo, name="typo")  # and pluggy itself refuses it the same way
    with pytest.raises(Exception, match="unknown hook 'register_model'"):
        pm.check_pending()


def test_optional_hook_with_unknown_name_is_allowed_as_pluggy_allows_it(registered):
    class Optional:
        @hookimpl(optionalhook=True)
        def register_something_from_another_project(register):
            pass
    registered(Optional, "optional")
    import qwen_interp
    qwen_interp.plugin_manager().check_pending()


def test_pm_check_pending_passes_after_load():
    import qwen_interp
    qwen_interp.plugin_manager().check_pending()


# --- built-ins from the core's list -------------------------------------------------------------
def test_builtins_load_from_the_core_list_not_entry_points():
    import tomllib

    import qwen_interp
    from qwen_interp import plugins
    assert plugins.BUILTIN_PLUGINS == {
        "qwen3": "qwen_interp_qwen3", "qwen35": "qwen_interp_qwen35",
        "transformerlens": "qwen_interp_transformerlens",
        "circuit_tracer": "qwen_interp_circuit_tracer", "saelens": "qwen_interp_saelens"}
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "qwen_interp" not in pyproject["project"].get("entry-points", {})
    st = qwen_interp.activation.state()
    assert st.plugin_names[:5] == list(plugins.BUILTIN_PLUGINS)
    pm = qwen_interp.plugin_manager()
    for name, module in plugins.BUILTIN_PLUGINS.items():
        assert pm.get_plugin(name) is sys.modules[module]
    # The command line's own commands are the app's, not a plugin the core loads.
    assert pm.get_plugin("commands") is None and "commands" not in st.plugin_names


def test_entry_point_taking_a_builtin_name_is_skipped(monkeypatch):
    from qwen_interp import plugins
    eps = [importlib.metadata.EntryPoint("qwen3", "acme_qwen3", plugins.ENTRY_POINT_GROUP),
           importlib.metadata.EntryPoint("saelens", "qwen_interp_saelens",
                                         plugins.ENTRY_POINT_GROUP),  # an older install's
           importlib.metadata.EntryPoint("acme", "acme_plugin", plugins.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: eps)
    skipped = {}
    assert [ep.name for ep in plugins.third_party_entry_points(skipped)] == ["acme"]
    assert skipped == {"qwen3": "entry point qwen3 = acme_qwen3: 'qwen3' is the name of a "
                                "built-in plugin; rename the entry point"}


def test_version():
    import qwen_interp
    assert qwen_interp.__version__ == importlib.metadata.version("qwen-interp")


# --- every hook, end to end ---------------------------------------------------------------------
def test_hook_register_model_families_every_hook_records_reach_the_registry(every_hook,
                                                                            registered):
    import qwen_interp
    registered(every_hook, "every_hook")
    reg = qwen_interp.registry()
    found = {
        "models": every_hook.MODEL,
        "model_families": every_hook.ARCHITECTURE,
        "hook_name_maps": every_hook.ARCHITECTURE,
        "transcoder_releases": "every-hook/clt-tiny",
        "transcoder_formats": "every_hook",
        "sae_releases": "every-hook-sae-tiny",
        "adapters": "every_hook",
        "commands": "every-hook",
        "doctor_checks": "every_hook-check",
        "upstream_projects": "every-hook-upstream",
    }
    for table, key in found.items():
        assert key in getattr(reg, table), table
        assert reg.owners[table][key] == "every_hook", table
    # A family's hook names are its architecture's hook-name map.
    assert reg.model_family(every_hook.ARCHITECTURE) is every_hook.FAMILY
    assert reg.hook_names(every_hook.ARCHITECTURE) is every_hook.FAMILY.hook_names
    assert reg.owners["hook_name_maps"][every_hook.ARCHITECTURE] == "every_hook"
    assert reg.model("every-hook-tiny").repo_id == every_hook.MODEL
    # Its adapter ran (textwrap is imported) and reports one PartStatus per part.
    import textwrap
    assert getattr(textwrap, every_hook.MARK) is True
    (status,) = reg.adapters["every_hook"].status()
    assert (status.part, status.state) == ("mark", "bridged")
    qwen_interp.unregister_plugin(every_hook)
    assert not hasattr(textwrap, every_hook.MARK)  # undone with the plugin


def test_hook_register_commands_every_hook_command_in_the_cli(every_hook, registered, cli):
    registered(every_hook, "every_hook")
    out = cli("every-hook", "--shout")
    assert (out.returncode, out.stdout) == (0, every_hook.COMMAND_OUTPUT.upper() + "\n")
    out = cli("--help")
    assert "every-hook" in out.stdout and "the every_hook test plugin's command" in out.stdout
    out = cli("models")
    assert every_hook.MODEL in out.stdout and "every-hook/clt-tiny" in out.stdout
    assert "every-hook-sae-tiny" in out.stdout
    out = cli("patches", "list")
    assert "every-hook-upstream 0.1  nothing" in out.stdout



class ShadowsDoctor:
    """A plugin whose command takes the name of a built-in one."""

    @staticmethod
    @hookimpl
    def register_commands(register):
        register(Command("doctor", "not the real doctor", configure=lambda parser: None,
                         run=lambda args: 99))


def test_a_plugin_command_cannot_take_a_builtin_name(registered, cli):
    registered(ShadowsDoctor, "shadow")
    out = cli("doctor")
    assert out.returncode != 99 and "upstream gaps bridged:" in out.stdout  # the real one ran
    assert ("qwen-interp: command 'doctor' of plugin 'shadow' left out: 'doctor' is a built-in "
            "command") in out.stderr

def test_hook_register_doctor_checks_every_hook_in_doctor(every_hook, registered, cli):
    registered(every_hook, "every_hook")
    out = cli("doctor")
    assert out.returncode == 1, out.stdout + out.stderr  # its check reports a problem
    lines = out.stdout.splitlines()
    assert f"WARNING: {every_hook.DOCTOR_PROBLEM}" in lines
    assert "  [every_hook] mark: bridged (textwrap.EVERY_HOOK_WAS_HERE set)" in lines
    (tables,) = [line for line in lines if line.startswith("  doctor_checks: ")]
    assert "every_hook" in tables.split("(")[1]
    assert not any(line.startswith("no known-bad versions installed") for line in lines)


@pytest.mark.subprocess
def test_hook_register_upstream_patches_every_hook_installed_as_an_entry_point(tmp_path,
                                                                                every_hook):
    """The same plugin installed as a distribution: found through the entry-point group."""
    dist = tmp_path / "every_hook-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: every-hook\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[qwen_interp]\nevery_hook = every_hook\n")
    out = run_python("""
        import contextlib, io, json, qwen_interp
        from qwen_interp.apps.cli import main
        st, reg = qwen_interp.activation.state(), qwen_interp.registry()
        runs = {}
        for args in (["every-hook"], ["patches", "list"]):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = main(args)
            runs[args[0]] = [code, buf.getvalue()]
        print(json.dumps(dict(names=st.plugin_names, skipped=st.skipped_plugins,
                              owner=reg.owners["upstream_projects"]["every-hook-upstream"],
                              runs=runs)))
    """, env={"PYTHONPATH": f"{tmp_path}:{PLUGINS_DIR}"})
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["names"][-1] == "every_hook" and state["skipped"] == {}
    assert state["owner"] == "every_hook"
    assert state["runs"]["every-hook"] == [0, every_hook.COMMAND_OUTPUT + "\n"]
    assert state["runs"]["patches"][0] == 0
    assert "every-hook-upstream 0.1  nothing" in state["runs"]["patches"][1]


# --- doctor and the command line with broken plugin code -----------------------------------
def test_doctor_reports_a_raising_check_and_failed_parts_without_crashing(capsys):
    from qwen_interp.adapters import FAILED, PartStatus
    from qwen_interp.apps import commands

    def boom():
        raise RuntimeError("no network")
    checks = {"ok": DoctorCheck("ok", lambda: []), "boom": DoctorCheck("boom", boom),
              "bad": DoctorCheck("bad", lambda: ["acme 2.0: broken"])}
    assert commands.run_doctor_checks(checks) == [
        "doctor check 'boom' raised RuntimeError: no network", "acme 2.0: broken"]

    class Adapter:  # a third-party adapter: PartStatus records and plain strings
        name, module = "acme", "json"

        def status(self):
            return [PartStatus("acme", "loader", FAILED, "KeyError: 'x'"), "a line of its own"]
    assert commands.print_adapter("acme", Adapter(), {}) == 1  # one FAILED part
    assert capsys.readouterr().out.splitlines() == [
        "  [acme] loader: failed (KeyError: 'x')", "  [acme] a line of its own"]


def test_a_command_whose_configure_raises_is_left_out(capsys):
    from qwen_interp.apps.cli import build_parser

    def bad_configure(parser):
        raise TypeError("oops")
    ok = Command("ok", "fine", configure=lambda p: None, run=lambda args: 0)
    parser = build_parser({"bad": Command("bad", "broken", configure=bad_configure,
                                          run=lambda args: 0), "ok": ok})
    assert capsys.readouterr().err == ("qwen-interp: command 'bad' left out: its configure "
                                       "raised TypeError: oops\n")
    assert parser.parse_args(["ok"]).func is ok.run
    with pytest.raises(SystemExit):
        parser.parse_args(["bad"])


def test_malformed_new_records_are_refused():
    import qwen_interp
    from qwen_interp.specs import HookNameMap, ModelFamily

    class BadFamily:
        @hookimpl
        def register_model_families(register):
            register(ModelFamily("AcmeForCausalLM", "AcmeConfig",
                                 hook_names=HookNameMap("OtherForCausalLM")))

    class BadCommand:
        @hookimpl
        def register_commands(register):
            register(Command("two words", "", configure=lambda p: None, run=lambda a: 0))

    with pytest.raises(RegistryError, match="ModelFamily 'AcmeForCausalLM' has hook_names for "
                                            "'OtherForCausalLM'"):
        qwen_interp.register_plugin(BadFamily, name="bad-family")
    with pytest.raises(RegistryError, match="Command.name must be one word"):
        qwen_interp.register_plugin(BadCommand, name="bad-command")
