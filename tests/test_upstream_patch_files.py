"""The upstream patches as records and as files: each ecosystem plugin registers its
``UpstreamProject`` through ``register_upstream_patches``, and ``patches/<distribution>/`` holds
every patch rendered against the installed pinned release, current with the plugins' source."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qwen_interp.apps import upstream
from qwen_interp.apps.cli import main
from qwen_interp.upstream_patches import Patch, UpstreamProject

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "regenerate them: `qwen-interp patches write` from the repository root"


@pytest.fixture(scope="module")
def rendered():
    """``{distribution: [Rendered]}`` against the installed pinned releases, rendered once."""
    return {name: upstream.rendered(name) for name in upstream.projects()}


def test_each_ecosystem_plugin_registers_its_project(qwen_registry):
    projects = qwen_registry.upstream_projects
    assert {name: qwen_registry.owners["upstream_projects"][name] for name in projects} == {
        "transformer-lens": "transformerlens", "circuit-tracer": "circuit_tracer",
        "sae-lens": "saelens"}
    assert all(isinstance(p, UpstreamProject) and p.distribution == name
               for name, p in projects.items())


def test_projects_are_listed_upstreams_first_whatever_the_plugin_order():
    """circuit-tracer and SAELens require transformer-lens: its patches come first."""
    assert list(upstream.projects()) == ["transformer-lens", "circuit-tracer", "sae-lens"]


def test_patch_files_in_the_repository_are_current(rendered):
    folders = {p.name for p in (ROOT / "patches").iterdir() if p.is_dir()}
    assert folders == set(rendered), f"patches/ has folders {sorted(folders)}; {REGENERATE}"
    for name, items in rendered.items():
        want = {upstream.patch_file_name(i, r.patch): upstream.section(r)
                for i, r in enumerate(items, 1)}
        have = {f.name: f.read_text(encoding="utf-8")
                for f in sorted((ROOT / "patches" / name).glob("*.patch"))}
        assert sorted(have) == sorted(want), f"patches/{name}: {REGENERATE}"
        stale = [file for file in want if have[file] != want[file]]
        assert not stale, f"patches/{name}: {stale} differ from the plugins' source; {REGENERATE}"


def test_patch_files_joined_in_name_order_are_the_render(rendered):
    for name in rendered:
        files = upstream.patch_files(name)
        assert list(files) == sorted(files)  # NN- keeps the order the patches apply in
        assert "\n".join(files.values()) == upstream.render(name), name


def test_patch_files_apply_one_by_one_with_git_apply(tmp_path):
    tree = upstream.copy_released_source("sae-lens", tmp_path / "tree")
    subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    for file in sorted((ROOT / "patches" / "sae-lens").glob("*.patch")):
        proc = subprocess.run(["git", "apply", str(file)], cwd=tree, capture_output=True,
                              text=True)
        assert proc.returncode == 0, (file.name, proc.stderr)
    assert all(r.note.startswith("already upstream") for r in upstream.rendered("sae-lens", tree))


def test_cli_patches_write_creates_updates_and_prunes(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["patches", "write", "sae-lens", "--out", str(out)]) == 0
    folder = out / "sae-lens"
    written = sorted(f.name for f in folder.iterdir())
    assert written == ["01-qwen-scope-weights-only.patch"]
    assert capsys.readouterr().out == f"wrote {folder / written[0]}\n"
    (folder / "02-renamed-since.patch").write_text("old\n")
    (folder / "notes.txt").write_text("kept\n")  # only .patch files are the writer's
    assert main(["patches", "write", "sae-lens", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"removed {folder / '02-renamed-since.patch'}", f"unchanged {folder / written[0]}"]
    assert sorted(f.name for f in folder.iterdir()) == [written[0], "notes.txt"]


def test_cli_patches_write_of_an_unknown_project_writes_nothing(tmp_path, capsys):
    assert main(["patches", "write", "no-such-lib", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "qwen-interp patches: error: no patches for 'no-such-lib'; known: "), err
    assert not (tmp_path / "out").exists()


def test_a_project_refuses_two_patches_with_one_name():
    def nothing(root, registry):
        return {}
    patch = Patch("same", "A title", "A description.", nothing)
    with pytest.raises(ValueError, match=r"'some-lib': patch names must be unique, got \['same'\]"):
        UpstreamProject("some-lib", "some_lib", "1.0", (patch, patch))
