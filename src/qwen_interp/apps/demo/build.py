"""Build the trained demo into a Hugging Face cache, under the real repo ids: the model
(``Qwen/Qwen3-1.7B-Base``), its cross-layer transcoder (``bluelightai/clt-qwen3-1.7b-base-20k``)
and Qwen-Scope-style SAEs (``Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50``).

Each snapshot holds ``qwen_interp_demo.json`` with the recipe id (a version plus a hash of the
recipe and of the facts); a snapshot without it, or with another id (the random-weight demo of
earlier versions, an older recipe), is rebuilt - all three together, as the dictionaries are
trained on the model. Snapshots are written atomically (``OfflineHub.snapshot``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from . import dictionaries as D
from . import facts as F
from . import train as T

RECIPE_VERSION = "qwen-interp-demo/1"
MARKER = "qwen_interp_demo.json"
MODEL_REPO = T.MODEL_REPO
TRANSCODER_REPO = "bluelightai/clt-qwen3-1.7b-base-20k"
SAE_RELEASE = "qwen-scope-3-1.7b-base-w32k-l50"
THREADS = 1  # the build's torch threads: fixed for reproducible sums (and fastest on a busy CPU)


def recipe_id(recipe: T.Recipe | None = None, dict_recipe: D.DictRecipe | None = None) -> str:
    blob = json.dumps({"model": asdict(recipe or T.Recipe()),
                       "dictionaries": asdict(dict_recipe or D.DictRecipe()),
                       "facts": [(f.prompt, f.targets) for f in F.corpus()],
                       "activation_prompts": D.activation_prompts()}, sort_keys=True)
    return f"{RECIPE_VERSION}+{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def recipe_of(folder: Path) -> str | None:
    """The recipe id a snapshot was built with; None when it has none (or is unreadable)."""
    try:
        return json.loads((folder / MARKER).read_text())["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sae_layers(n_layers: int) -> list[int]:
    return list(range(n_layers))


def demo_sae_release(d_sae: int | None = None):
    """The demo SAEs as a release record: the real release's repo, k and hook, at the demo's
    shapes. Not registered (the real release keeps its name and shapes): :func:`load_demo_sae`
    hands it to the project's loader in a copy of the registry."""
    import dataclasses

    import qwen_interp
    real = qwen_interp.registry().sae_releases[SAE_RELEASE]
    cfg = T.config()
    return dataclasses.replace(real, release=f"qwen-interp-demo-{real.release}",
                               d_model=cfg.hidden_size,
                               d_sae=d_sae or D.DictRecipe().sae_features,
                               n_layers=cfg.num_hidden_layers)


def load_demo_sae(layer: int, hf_home: str | Path | None = None, device: str = "cpu"):
    """A SAELens ``SAE`` of the demo's ``layer{layer}.sae.pt``, read from its Hub snapshot by the
    project's directory loader (``load_sae_from_dir``). ``SAE.from_pretrained`` of the real
    release refuses it: its shapes are the release's real ones."""
    import dataclasses
    import os

    import qwen_interp
    from qwen_interp.apps.testing import OfflineHub
    from qwen_interp_saelens.loader import load_sae_from_dir
    if hf_home is None:
        from qwen_interp.apps.trace import demo_hf_home
        hf_home = os.environ.get("HF_HOME") or demo_hf_home()
    folder = OfflineHub(hf_home).snapshot_path(demo_sae_release().repo_id)
    try:
        d_sae = json.loads((folder / MARKER).read_text()).get("d_sae")
    except (OSError, ValueError):
        d_sae = None
    release = demo_sae_release(d_sae)
    reg = qwen_interp.registry()
    with_demo = dataclasses.replace(reg, sae_releases={**reg.sae_releases,
                                                        release.release: release})
    return load_sae_from_dir(folder, layer, release=release.release, device=device,
                             registry=with_demo)


def build_trained_demo(hf_home: str | Path, echo=print, force: bool = False,
                       recipe: T.Recipe | None = None,
                       dict_recipe: D.DictRecipe | None = None) -> dict:
    """The demo's three snapshots in ``hf_home`` (built, or rebuilt when stale). Returns their
    folders, ``built`` and, when it built them, the training report (accuracy, FVU, L0,
    seconds per stage). ``recipe``/``dict_recipe``: other training settings (tests use short
    ones); the recipe id records them."""
    import qwen_interp
    from qwen_interp.apps.testing import OfflineHub
    from qwen_interp.atomic import file_lock
    hub = OfflineHub(hf_home)
    reg = qwen_interp.registry()
    clt_release = reg.transcoder_release(TRANSCODER_REPO)
    sae_release = reg.sae_releases[SAE_RELEASE]
    repos = (MODEL_REPO, clt_release.repo_id, sae_release.repo_id)
    recipe, dict_recipe = recipe or T.Recipe(), dict_recipe or D.DictRecipe()
    if dict_recipe.sae_k != sae_release.k:
        raise ValueError(f"the demo SAEs keep {SAE_RELEASE}'s k = {sae_release.k}, "
                         f"not {dict_recipe.sae_k}")
    rid = recipe_id(recipe, dict_recipe)
    folders = {"model": hub.snapshot_path(MODEL_REPO),
               "transcoder": hub.snapshot_path(clt_release.repo_id),
               "sae": hub.snapshot_path(sae_release.repo_id)}

    def current() -> bool:
        return all(hub.has(r) and recipe_of(hub.snapshot_path(r)) == rid for r in repos)

    if current() and not force:
        return {**folders, "built": False}
    # One builder at a time: a second process waits here, then finds the cache current.
    with file_lock(Path(hf_home) / ".qwen-interp-demo.lock"):
        if current() and not force:
            return {**folders, "built": False}
        stale = [r for r in repos if hub.snapshot_path(r).is_dir()]
        older = sorted({recipe_of(hub.snapshot_path(r)) or "none (the random demo)"
                        for r in stale} - {rid})
        if older:
            echo(f"demo build: the cache was built by recipe {', '.join(older)}; rebuilding")
        for repo in stale:  # all three go together: the dictionaries fit one model
            _discard(hub.snapshot_path(repo))
        echo(f"demo build: training the demo model, its transcoder and SAEs ({rid}; once)")
        with _threads(THREADS):
            report = _build(hub, rid, recipe, dict_recipe, clt_release, sae_release, echo)
    return {**folders, **report, "built": True}


def _discard(folder: Path) -> None:
    """Move a snapshot out of sight at once, then delete it."""
    import os
    import shutil

    from qwen_interp.atomic import temp_folder
    bin_ = temp_folder(folder)
    os.rename(folder, bin_ / folder.name)
    shutil.rmtree(bin_, ignore_errors=True)


def _build(hub, rid: str, recipe: T.Recipe, dict_recipe: D.DictRecipe, clt_release,
           sae_release, echo) -> dict:
    import torch
    start = time.perf_counter()
    report: dict = {"recipe": rid, "seconds": {}}

    def stage(name: str, t0: float, detail: str = "") -> float:
        now = time.perf_counter()
        report["seconds"][name] = round(now - t0, 2)
        echo(f"demo build: {name} in {now - t0:.1f} s{'  ' + detail if detail else ''}")
        return now

    def marker(folder: Path, **stats) -> None:
        (folder / MARKER).write_text(json.dumps({"recipe": rid, **stats}, indent=2))

    t = start
    trained = T.train(recipe)
    report["accuracy"] = trained.accuracy
    t = stage("model trained", t, f"({len(trained.batch.facts)} facts, "
              f"{trained.accuracy:.1%} right)")
    model = T.hf_model(trained.weights, trained.cfg)
    diff = T.check_against_hf(model, trained.weights, trained.cfg)
    if diff > 1e-3:
        raise RuntimeError(f"demo build: the training forward pass and transformers disagree "
                           f"by {diff:.2e} on the seed prompt's logits")

    def write_model(folder: Path) -> None:
        from qwen_interp.apps.testing.hub import write_tokenizer
        model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
        write_tokenizer(folder)
        marker(folder, accuracy=trained.accuracy, facts=len(trained.batch.facts))

    hub.snapshot(MODEL_REPO, write_model)

    acts = D.activations(trained.weights, trained.cfg)
    clt = D.train_clt(acts, dict_recipe)
    report["clt_stats"] = D.clt_stats(clt, acts)
    t = stage("transcoder trained", t, "FVU/L0 per layer: " + ", ".join(
        f"{s['fvu']:.3f}/{s['l0']:.1f}" for s in report["clt_stats"]))

    def write_transcoder(folder: Path) -> None:
        D.write_clt(folder, clt, clt_release, MODEL_REPO)
        marker(folder, layers=report["clt_stats"])

    hub.snapshot(clt_release.repo_id, write_transcoder)
    saes, report["sae_stats"] = {}, []
    for layer in sae_layers(trained.cfg.num_hidden_layers):
        x = acts.resid_post[layer]
        saes[layer] = D.train_sae(x, acts.weight, dict_recipe, seed_offset=layer)
        report["sae_stats"].append({"layer": layer,
                                    **D.sae_stats(saes[layer], x, acts.weight, sae_release.k)})
    t = stage("SAEs trained", t, "FVU per layer: " + ", ".join(
        f"{s['fvu']:.3f}" for s in report["sae_stats"]))

    def write_saes(folder: Path) -> None:
        from qwen_interp.apps.testing.sae_hub import write_qwen_scope_layer
        for layer, sae in saes.items():
            write_qwen_scope_layer(folder / sae_release.file_template.format(layer=layer), sae)
        marker(folder, layers=report["sae_stats"], d_sae=dict_recipe.sae_features,
               k=sae_release.k)

    hub.snapshot(sae_release.repo_id, write_saes)
    stage("demo built", start)
    return report


class _threads:
    """A fixed torch thread count and deterministic algorithms for the build, restored after."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self):
        import torch
        self.before = torch.get_num_threads()
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(self.n)
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        import torch
        torch.set_num_threads(self.before)
        torch.use_deterministic_algorithms(self.deterministic)
