"""Feature statistics (``qwen-interp features compute``) against independent references.

The reference activations come from tools we did not write: circuit-tracer's
``ReplacementModel.get_activations`` (a separately loaded model + CLT) and SAELens's
``HookedSAETransformer.run_with_cache_with_saes``. From them the expected statistics are computed
directly per token with numpy: counts, max, top-k (activation descending, then corpus order) and
histograms exact; sums within 1e-9 relative (float64); activations within 1e-5 (fp32, CPU, the
small offline Qwen3-1.7B-Base stand-in, 3 layers, CLT width 32, SAE width 256).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import stand_in_dictionaries

SAE_LAYERS = (0, 2)
WORDS = ("the cat sat on a warm mat while rain fell over quiet hills and an old dog slept by "
         "the door because winter had come early to the small town of Alder").split()


def make_corpus(path, n_docs: int = 60) -> None:
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))).capitalize() + "."
             for _ in range(n_docs)]
    lines[5] = "   "  # empty: skipped and counted
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def setup(qwen_offline_hub, qwen_registry, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "docs.txt"
    make_corpus(corpus)
    with stand_in_dictionaries(qwen_offline_hub, qwen_registry) as release:
        yield release, corpus


def run_config(release, corpus, **kw):
    from qwen_interp.apps.features.accumulators import StatsConfig
    from qwen_interp.apps.features.collect import RunConfig
    stats = kw.pop("stats", StatsConfig(top_k=5, samples=6, before=3, after=2, partners=3,
                                        bins=64))
    settings = {"ctx_len": 16, "batch_size": 3, "shard_batches": 2, **kw}
    return RunConfig(model="Qwen/Qwen3-1.7B-Base", transcoder="bluelight-qwen3-1.7b",
                     corpus=str(corpus), saes=tuple((release.release, n) for n in SAE_LAYERS),
                     stats=stats, **settings)


@pytest.fixture(scope="module")
def session(setup):
    from qwen_interp.apps.features.collect import load_session
    release, corpus = setup
    return load_session(run_config(release, corpus), device="cpu")


@pytest.fixture(scope="module")
def single(setup, session, tmp_path_factory):
    from qwen_interp.apps.features.job import compute
    release, corpus = setup
    out = tmp_path_factory.mktemp("single")
    result = compute(run_config(release, corpus), out, session=session, progress=False)
    return result


def load_total(out, names):
    from qwen_interp.apps.features.collect import load_checkpoint
    total, _, _ = load_checkpoint(out, names)
    return total


def all_contexts(session, config):
    from qwen_interp.apps.features.collect import first_token_id, shards
    from qwen_interp.apps.features.corpus import CorpusReport
    tok = session.model.tokenizer
    return np.concatenate([c for _, _, c in shards(config, tok, first_token_id(tok),
                                                   CorpusReport(sources=[]))])


@pytest.fixture(scope="module")
def reference(setup, session):
    """Per-token activations ``{block: [n_contexts, ctx_len, F]}`` from the upstream tools."""
    from circuit_tracer import ReplacementModel
    from sae_lens import SAE, HookedSAETransformer
    release, corpus = setup
    contexts = all_contexts(session, run_config(release, corpus))
    ct = ReplacementModel.from_pretrained("Qwen/Qwen3-1.7B-Base", "bluelight-qwen3-1.7b",
                                          device=torch.device("cpu"))
    clt = torch.stack([ct.get_activations(torch.as_tensor(c))[1] for c in contexts], 1)
    hst = HookedSAETransformer.from_pretrained("Qwen/Qwen3-1.7B-Base", device="cpu")
    saes = [SAE.from_pretrained(release.release, f"layer{n}", device="cpu") for n in SAE_LAYERS]
    _, cache = hst.run_with_cache_with_saes(torch.as_tensor(contexts), saes=saes,
                                            use_error_term=True)
    acts = {f"clt/{layer}": clt[layer].numpy() for layer in range(clt.shape[0])}
    for n in SAE_LAYERS:
        sae_acts = cache[f"blocks.{n}.hook_resid_post.hook_sae_acts_post"].numpy().copy()
        sae_acts[:, 0] = 0  # position 0 (the special first token) is left out everywhere
        acts[f"sae/{n}"] = sae_acts
    return contexts, acts


def test_statistics_equal_direct_reference(setup, single, reference):
    from qwen_interp.apps.features.accumulators import HistogramBins
    release, corpus = setup
    config = run_config(release, corpus)
    contexts, acts = reference
    total = load_total(single.out, list(acts))
    edges = HistogramBins(config.stats).edges
    n_ctx, ctx_len = contexts.shape
    assert single.contexts == n_ctx and n_ctx >= 10
    for name, a in acts.items():
        block = total[name]
        flat = a[:, 1:].reshape(-1, a.shape[-1]).astype(np.float64)  # position 0 left out
        gidx = (np.arange(n_ctx)[:, None] * ctx_len + np.arange(1, ctx_len)).ravel()
        firing = flat > 0
        assert int(block.n_tokens) == flat.shape[0]
        assert np.array_equal(block.count.numpy(), firing.sum(0)), name
        assert firing.any(), name  # the check means something
        np.testing.assert_allclose(block.max.numpy(), flat.max(0).clip(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(block.sum.numpy(), flat.sum(0), rtol=1e-5, atol=1e-5)
        for f in range(a.shape[-1]):
            col = flat[:, f]
            on = col > 0
            # top-k by (activation descending, corpus position ascending)
            order = np.lexsort((gidx, -col))[:config.stats.top_k]
            order = order[col[order] > 0]
            got = block.top.gidx[f].numpy()
            assert list(got[:len(order)]) == list(gidx[order]), (name, f)
            assert (got[len(order):] == -1).all()
            hist = np.bincount(np.searchsorted(edges, col[on], side="right"),
                               minlength=config.stats.bins)
            assert np.array_equal(block.hist[f].numpy(), hist), (name, f)
        # windows: per-token activations around each top example equal the reference
        for f in range(0, a.shape[-1], 7):
            for slot, g in enumerate(block.top.gidx[f].tolist()):
                if g < 0:
                    continue
                c, p = divmod(g, ctx_len)
                lo, hi = max(0, p - config.stats.before), min(ctx_len, p + config.stats.after + 1)
                off = lo - (p - config.stats.before)
                window = block.top.acts[f, slot].numpy()[off:off + hi - lo]
                np.testing.assert_allclose(window, a[c, lo:hi, f], rtol=1e-5, atol=1e-5)
                tokens = block.top.tokens[f, slot].numpy()[off:off + hi - lo]
                assert np.array_equal(tokens, contexts[c, lo:hi])
                # co-activation: the strongest features at that token (ties: lower feature)
                at = a[c, p]
                firing_here = np.flatnonzero(at > 0)
                strongest = firing_here[np.lexsort((firing_here, -at[firing_here]))]
                strongest = strongest[:config.stats.partners]
                partners = block.top.partners[f, slot].numpy()
                assert list(partners[:len(strongest)]) == list(strongest), (name, f, slot)
                assert (partners[len(strongest):] == -1).all()


def test_random_sample_is_lowest_priority_firing_tokens(setup, single, reference):
    from qwen_interp.apps.features.accumulators import token_priority
    release, corpus = setup
    config = run_config(release, corpus)
    contexts, acts = reference
    total = load_total(single.out, list(acts))
    n_ctx, ctx_len = contexts.shape
    gidx = (np.arange(n_ctx)[:, None] * ctx_len + np.arange(1, ctx_len)).ravel()
    priority = token_priority(gidx)
    a = acts["clt/1"]
    flat = a[:, 1:].reshape(-1, a.shape[-1])
    for f in range(a.shape[-1]):
        on = np.flatnonzero(flat[:, f] > 0)
        expected = gidx[on[np.argsort(priority[on], kind="stable")][:config.stats.samples]]
        got = total["clt/1"].sample.gidx[f].numpy()
        assert list(got[:len(expected)]) == list(expected)


def test_tables_and_report(setup, single):
    import pyarrow.parquet as pq
    release, corpus = setup
    report = json.loads((single.out / "report.json").read_text())
    assert report["skipped_empty"] == 1 and report["complete"] is True
    assert report["contexts_computed"] == single.contexts
    clt = pq.read_table(single.out / "tables" / "clt.parquet").to_pandas()
    sae = pq.read_table(single.out / "tables" / "sae.parquet").to_pandas()
    assert sorted(clt.layer.unique()) == [0, 1, 2] and len(clt) == 3 * 32
    assert sorted(sae.layer.unique()) == list(SAE_LAYERS) and len(sae) == 2 * 256
    assert (sae.dictionary == release.release).all()
    row = clt[clt["count"] > 0].iloc[0]
    assert row.frequency == pytest.approx(row["count"] / row.n_tokens)
    assert row["max"] == pytest.approx(row.top_examples[0]["value"])
    assert len(row.top_logits) == 10 and len(row.quantiles) == 100
    assert row.quantiles[-1] == pytest.approx(row["max"])
    assert np.all(np.diff(row.quantiles) >= -1e-6)  # percentiles rise
    assert row.min_active <= row.quantiles[0] * 1.0001


def test_logit_effects_equal_decoder_times_unembedding(session):
    """Top logits of a CLT feature: (sum of its decoder rows ⊙ final RMSNorm gain) @ W_U."""
    from qwen_interp.apps.features.export import logit_effects
    top_ids, top_vals, bottom_ids, _ = logit_effects(session, "clt/1")
    model = session.model
    dec = model.transcoders._get_decoder_vectors(1)  # [F, targets, d_model]
    effect = (dec.sum(1) * model.ln_final.w) @ model.W_U
    ref = effect.topk(10, dim=1)
    assert torch.equal(torch.as_tensor(top_ids), ref.indices)
    assert torch.allclose(torch.as_tensor(top_vals), ref.values, atol=1e-5)
    assert torch.equal(torch.as_tensor(bottom_ids), effect.topk(10, dim=1, largest=False).indices)


def test_ray_two_workers_equal_single_process(setup, single, session, tmp_path):
    from safetensors.torch import load_file

    from qwen_interp.apps.features.job import compute
    release, corpus = setup
    config = run_config(release, corpus)
    result = compute(config, tmp_path / "ray", session=session, progress=False,
                     ray_address="local", ray_workers=2)
    assert result.shards == single.shards >= 3
    a = load_file(single.out / "checkpoint.safetensors")
    b = load_file(tmp_path / "ray" / "checkpoint.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert same_outputs(single.out, tmp_path / "ray")


def same_outputs(a, b) -> bool:
    import pyarrow.parquet as pq
    for name in ("clt", "sae"):
        if (a / "tables" / f"{name}.parquet").exists() != (b / "tables" / f"{name}.parquet"
                                                          ).exists():
            return False
        if (a / "tables" / f"{name}.parquet").exists() and not pq.read_table(
                a / "tables" / f"{name}.parquet").equals(pq.read_table(
                b / "tables" / f"{name}.parquet")):
            return False
    files = sorted(p.name for p in (a / "features").iterdir())
    return files == sorted(p.name for p in (b / "features").iterdir()) and all(
        (a / "features" / f).read_bytes() == (b / "features" / f).read_bytes() for f in files)


def test_bad_settings_fail_before_loading(setup, tmp_path):
    from qwen_interp.apps.features.job import compute
    release, corpus = setup
    with pytest.raises(ValueError, match="ctx_len must be at least 2"):
        compute(run_config(release, corpus, ctx_len=1), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="one SAE per layer"):
        config = run_config(release, corpus)
        compute(type(config)(**{**config.__dict__, "saes": ((release.release, 0),) * 2}),
                tmp_path / "y", progress=False)


def test_viewer_records_agree_with_the_statistics(setup, single, session):
    """What the viewer shows (read the viewer's way) is what the statistics hold."""
    from viewer_features import load_feature_from_binary, validate_with_circuit_tracer

    from qwen_interp.apps.features.sidecar import cantor_pair
    release, corpus = setup
    config = run_config(release, corpus)
    total = load_total(single.out, [f"clt/{n}" for n in range(3)])
    tok = session.model.tokenizer
    checked = 0
    for layer in range(3):
        block = total[f"clt/{layer}"]
        for f in range(block.width):
            record = load_feature_from_binary(single.out / "features", cantor_pair(layer, f))
            validate_with_circuit_tracer(record)
            count = int(block.count[f])
            assert record["index"] == f
            assert record["activation_frequency"] == count / int(block.n_tokens)
            assert sum(record["histogram"]) == count
            assert record["act_max"] == pytest.approx(float(block.max[f]))
            top = record["examples_quantiles"][0]
            assert top["quantile_name"] == "Top activations"
            values = [ex["tokens_acts_list"][ex["train_token_ind"]] for ex in top["examples"]]
            expected = block.top.value[f][block.top.gidx[f] >= 0].tolist()
            assert values == pytest.approx(expected, abs=1e-4)
            sampled = sum(len(q["examples"]) for q in record["examples_quantiles"][1:])
            assert sampled == min(count, config.stats.samples)
            for ex, slot in zip(top["examples"], range(len(expected))):
                assert "".join(ex["tokens"][:ex["train_token_ind"] + 1]).endswith(
                    tok.decode(block.top.tokens[f, slot][config.stats.before]))
            checked += count > 0
    assert checked > 10
