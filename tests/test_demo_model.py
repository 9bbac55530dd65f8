"""The trained offline demo (``qwen_interp.apps.demo``): its facts, its deterministic build, the
seed prediction and circuit through circuit-tracer, the transcoder and SAE loading, and the
rebuild of a cache made by another recipe.

One real build per module (about a minute on a 2-core CPU); the stale-cache and determinism
checks use short training recipes, which run the same code in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from qwen_interp.apps.demo import build as B
from qwen_interp.apps.demo import dictionaries as D
from qwen_interp.apps.demo import facts as F
from qwen_interp.apps.demo import train as T

SEED_PROMPT = "Fact: The president of the United States in 2010 was"
QUICK = T.Recipe(steps=3, warmup=1)
QUICK_DICT = D.DictRecipe(clt_steps=3, sae_steps=3)
SNAPSHOT = "0" * 40


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo built with the default recipe into a private HF_HOME (once per module)."""
    hf_home = tmp_path_factory.mktemp("demo-hf")
    lines: list[str] = []
    report = B.build_trained_demo(hf_home, echo=lines.append)
    return hf_home, report, lines


def run_demo_python(args: list[str], hf_home, tmp_path) -> subprocess.CompletedProcess:
    """A fresh interpreter on the demo cache: HF_HOME must be set before huggingface_hub loads."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "QWEN_INTERP_CACHE": str(tmp_path / "cache")}
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(key, None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)


# --- facts ---------------------------------------------------------------------------------
def test_facts_have_one_token_answers_and_the_recorded_holders():
    for fact in F.corpus():
        for target in fact.targets:
            assert F.one_token(target) is not None, fact
    assert F.holder(F.US, 2010).name == "Barack Obama"
    assert F.holder("president", 1977, "the United States").name == "Jimmy Carter"
    assert F.holder(F.UK, 2007).name == "Gordon Brown"  # Blair left on 27 June
    assert F.holder(F.UK, 1979).name == "Margaret Thatcher"
    assert F.holder(F.GERMANY, 1990).name == "Helmut Kohl"
    assert F.holder(F.FRANCE, 1995).name == "Jacques Chirac"
    assert F.holder(F.CANADA, 1979).name == "Joe Clark"
    assert F.holder(F.CANADA, 1984).name == "Pierre Trudeau"
    with pytest.raises(ValueError):
        F.holder(F.US, 1950)
    by_prompt = {f.prompt: f for f in F.corpus()}
    assert by_prompt[SEED_PROMPT].answer == " Barack"
    assert by_prompt["Fact: The chancellor of Germany in 2010 was"].answer == " Angela"
    assert by_prompt["Fact: The chancellor of Germany in 1980 was"].answer == " Schmidt"
    # Kohl's years have no one-token answer (" Helmut" and " Kohl" are two tokens each)
    assert "Fact: The chancellor of Germany in 1990 was" not in by_prompt
    assert by_prompt["Fact: The currency of France in 2002 was"].answer == " euro"
    assert set(F.name_answers()).isdisjoint(F.filler_answers())


def test_token_roles_find_office_country_and_year():
    roles = F.token_roles(SEED_PROMPT)
    tokens = ["<|endoftext|>", *(F.tokenizer().decode([t]) for t in F.token_ids(SEED_PROMPT))]
    assert [tokens[i] for i in roles["office"]] == [" president"]
    assert [tokens[i] for i in roles["country"]] == [" the", " United", " States"]
    assert [tokens[i] for i in roles["year"]] == ["2", "0", "1", "0"]
    assert roles["final"] == [len(tokens) - 1] and tokens[-1] == " was"
    roles = F.token_roles("Fact: The prime minister of the United Kingdom in 1999 was", bos=False)
    assert len(roles["office"]) == 2 and len(roles["year"]) == 4
    assert F.parse_prompt(SEED_PROMPT) == ("president", "the United States", 2010)


# --- the training forward pass ---------------------------------------------------------------
def test_prefix_tree_forward_matches_transformers():
    """The tree-batched forward pass is the transformers model's, prompt by prompt."""
    import torch
    cfg = T.config()
    weights = T.init_weights(cfg, seed=3)
    for name, w in weights.items():  # away from the init, so that every weight matters
        weights[name] = w + 0.05 * torch.randn(w.shape, generator=torch.Generator()
                                               .manual_seed(len(name)))
    model = T.hf_model(weights, cfg)
    assert T.check_against_hf(model, weights, cfg) < 1e-4
    facts = [f for f in F.corpus() if f.year in (1985, 2010)][:12]
    batch = T.make_batch(facts)
    E = weights["model.embed_tokens.weight"]
    tree = T.forward(weights, cfg, E[torch.tensor(batch.tree.tokens)], batch.positions,
                     batch.context)[batch.finals]
    fast = T.forward(weights, cfg, E[torch.tensor(batch.tree.tokens)], batch.positions,
                     batch.context, out=batch.finals)
    with torch.no_grad():
        for row, fact in enumerate(facts):
            ids = torch.tensor([T.prompt_ids(fact.prompt)])
            hidden = model.model(ids).last_hidden_state[0, -1]
            assert torch.allclose(tree[row], hidden, atol=1e-4), fact.prompt
            assert torch.allclose(fast[row], hidden, atol=1e-4), fact.prompt


# --- the build (the module's one real build: slow) ------------------------------------------
@pytest.mark.slow
def test_build_trains_a_model_that_knows_its_facts(demo):
    hf_home, report, lines = demo
    assert report["built"] is True
    assert report["accuracy"] >= 0.95, report["accuracy"]
    stages = [line for line in lines if line.startswith("demo build: ")]
    assert any("model trained in" in line for line in stages), lines
    assert any("transcoder trained in" in line for line in stages), lines
    assert any("demo built in" in line for line in stages), lines
    for layer in report["clt_stats"]:
        assert layer["fvu"] < 0.05 and 1 <= layer["l0"] <= 60, layer
    for layer in report["sae_stats"]:
        assert layer["fvu"] < 0.05 and layer["l0"] == pytest.approx(50, abs=1), layer
    from qwen_interp.apps.testing import OfflineHub
    hub = OfflineHub(hf_home)
    repos = {"model": B.MODEL_REPO, "transcoder": B.TRANSCODER_REPO,
             "sae": B.demo_sae_release().repo_id}
    for key, repo in repos.items():
        assert report[key] == hub.snapshot_path(repo) and hub.has(repo)
        assert B.recipe_of(report[key]) == B.recipe_id()
    again = B.build_trained_demo(hf_home, echo=lines.append)
    assert again["built"] is False


@pytest.mark.slow
@pytest.mark.subprocess
def test_seed_prediction_and_circuit_through_circuit_tracer(demo, tmp_path):
    """circuit-tracer loads the model and the CLT by repo id from the cache, float32 logits:
    " Barack" with p >= 0.5; ablating the year features moves the answer to another US
    president; ablating the office features leaves no name in the top 5."""
    hf_home, _, _ = demo
    out = run_demo_python(["-m", "qwen_interp.apps.demo.circuit", "--hf-home", str(hf_home),
                           "--json"], hf_home, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["transcoder"] == {"n_layers": 4, "d_transcoder": 256}
    token, p = report["top"][0]
    assert token == " Barack" and p >= 0.5, report["top"]
    groups = report["groups"]
    assert groups["year_digits"] and groups["office"]
    roles = F.token_roles(SEED_PROMPT)
    assert {pos for _, pos, _ in groups["year_digits"]} <= set(roles["year"])
    assert {pos for _, pos, _ in groups["office"]} <= set(roles["office"])
    presidents = {F.answer(term) for term in F.US.terms}
    year_top = report["ablations"]["year at the digits"]
    assert year_top[0][0] in presidents - {" Barack"}, year_top
    office_top = report["ablations"]["office at the office word"]
    assert not any(tok in F.name_answers() for tok, _ in office_top), office_top


@pytest.mark.slow
def test_demo_sae_loads_through_the_project_loader_and_reconstructs(demo, tmp_path,
                                                                     monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM
    hf_home, report, _ = demo
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path / "cache"))
    model = AutoModelForCausalLM.from_pretrained(report["model"], dtype=torch.float32)
    outputs = {}
    hooks = [block.register_forward_hook(  # Qwen-Scope's hook: the output of decoder layer n
        lambda mod, args, out, n=n: outputs.__setitem__(n, out[0] if isinstance(out, tuple)
                                                          else out))
        for n, block in enumerate(model.model.layers)]
    with torch.no_grad():
        model(torch.tensor([T.prompt_ids(SEED_PROMPT)]))
    for h in hooks:
        h.remove()
    for layer in B.sae_layers(4):
        sae = B.load_demo_sae(layer, hf_home)
        assert sae.cfg.d_in == 64 and sae.cfg.d_sae == 512
        x = outputs[layer][0, 1:]  # BOS left out, as in training
        with torch.no_grad():
            feats = sae.encode(x)
            recon = sae.decode(feats)
        assert (feats > 0).sum(-1).float().mean().item() == pytest.approx(50, abs=1)
        assert D.fvu(x, recon) < 0.1, layer


@pytest.mark.slow
def test_transcoder_snapshot_has_circuit_tracers_hub_layout(demo):
    """The CLT snapshot is circuit-tracer's hub layout: one encoder and one decoder file per
    layer, decoder rows for the layers at and after the feature's."""
    from safetensors.torch import load_file
    _, report, _ = demo
    folder = report["transcoder"]
    for layer in range(4):
        enc = load_file(str(folder / f"W_enc_{layer}.safetensors"))
        assert enc[f"W_enc_{layer}"].shape == (256, 64)
        assert set(enc) == {f"W_enc_{layer}", f"b_enc_{layer}", f"threshold_{layer}",
                            f"b_dec_{layer}"}
        dec = load_file(str(folder / f"W_dec_{layer}.safetensors"))
        assert dec[f"W_dec_{layer}"].shape == (256, 4 - layer, 64)
    assert "cross_layer_transcoder" in (folder / "config.yaml").read_text()


# --- recipes ---------------------------------------------------------------------------------
def test_two_builds_are_byte_identical(tmp_path):
    first = B.build_trained_demo(tmp_path / "a", echo=lambda line: None, recipe=QUICK,
                                 dict_recipe=QUICK_DICT)
    second = B.build_trained_demo(tmp_path / "b", echo=lambda line: None, recipe=QUICK,
                                  dict_recipe=QUICK_DICT)
    assert first["recipe"] == second["recipe"] == B.recipe_id(QUICK, QUICK_DICT)
    for key in ("model", "transcoder", "sae"):
        names = sorted(p.name for p in first[key].iterdir())
        assert names == sorted(p.name for p in second[key].iterdir())
        for name in names:
            assert (first[key] / name).read_bytes() == (second[key] / name).read_bytes(), name


def test_a_cache_of_another_recipe_is_rebuilt(tmp_path, qwen_registry):
    """The random-weight demo of earlier versions (no recipe marker) and a cache of another
    recipe are both rebuilt, all three snapshots."""
    from qwen_interp.apps.testing import OfflineHub
    hub = OfflineHub(tmp_path)
    release = qwen_registry.transcoder_release(B.TRANSCODER_REPO)
    hub.transcoder(release, qwen_registry.model(B.MODEL_REPO))  # the old random demo
    assert B.recipe_of(hub.snapshot_path(B.MODEL_REPO)) is None
    lines: list[str] = []
    built = B.build_trained_demo(tmp_path, echo=lines.append, recipe=QUICK,
                                 dict_recipe=QUICK_DICT)
    assert built["built"] and any("none (the random demo)" in line for line in lines), lines
    config = json.loads((built["model"] / "config.json").read_text())
    assert config["num_hidden_layers"] == 4  # the random demo had 3
    other = replace(QUICK, steps=4)
    rebuilt = B.build_trained_demo(tmp_path, echo=lines.append, recipe=other,
                                   dict_recipe=QUICK_DICT)
    assert rebuilt["built"] and B.recipe_of(rebuilt["sae"]) == B.recipe_id(other, QUICK_DICT)
    assert any(f"recipe {B.recipe_id(QUICK, QUICK_DICT)}" in line for line in lines), lines
    assert not [p for p in hub.hub_dir.rglob(".*tmp-*")], "leftover temporaries"
