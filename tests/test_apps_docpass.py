"""The applications' document pass against tools we did not write.

Reference activations: circuit-tracer's ``ReplacementModel.get_activations`` (a separately loaded
model + CLT) and SAELens's ``HookedSAETransformer.run_with_cache_with_saes``, each document run
alone (batch 1) with circuit-tracer's first token. Expected: the pass's per-token activations and
per-document maxima equal them within 1e-5 (fp32, CPU; the pass batches documents of different
lengths with right padding, so only float rounding of other batch shapes may differ), position 0
left out. Model: the small offline Qwen3-1.7B-Base stand-in (3 layers, CLT width 32, SAE width
256 at layers 0 and 2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import stand_in_dictionaries

SAE_LAYERS = (0, 2)
TEXTS = ["The cat sat on the warm mat.", "Rain", "An old dog slept by the door because winter "
         "had come early to the small town of Alder, and nobody minded.",
         "Winter came.", "Quiet hills, quiet rain, quiet town."]
ATOL = 1e-5


@pytest.fixture(scope="module")
def setup(qwen_offline_hub, qwen_registry):
    with stand_in_dictionaries(qwen_offline_hub, qwen_registry) as release:
        yield release


@pytest.fixture(scope="module")
def model_config(setup):
    from qwen_interp.apps.applications.model import ModelConfig
    return ModelConfig(model="Qwen/Qwen3-1.7B-Base", transcoder="bluelight-qwen3-1.7b",
                       saes=tuple((setup.release, n) for n in SAE_LAYERS))


@pytest.fixture(scope="module")
def session(model_config):
    from qwen_interp.apps.applications.model import load_session
    return load_session(model_config, device="cpu")


@pytest.fixture(scope="module")
def reference(setup, session):
    """Per document: ``{block: (tokens, width)}`` from the upstream tools, position 0 dropped."""
    from circuit_tracer import ReplacementModel
    from sae_lens import SAE, HookedSAETransformer
    ct = ReplacementModel.from_pretrained("Qwen/Qwen3-1.7B-Base", "bluelight-qwen3-1.7b",
                                          device=torch.device("cpu"))
    hst = HookedSAETransformer.from_pretrained("Qwen/Qwen3-1.7B-Base", device="cpu")
    saes = [SAE.from_pretrained(setup.release, f"layer{n}", device="cpu") for n in SAE_LAYERS]
    out = []
    for text in TEXTS:
        tokens = ct.ensure_tokenized(text)  # circuit-tracer's own first-token rule
        clt = ct.get_activations(tokens)[1]
        _, cache = hst.run_with_cache_with_saes(tokens.unsqueeze(0), saes=saes,
                                                use_error_term=True)
        doc = {f"clt/{layer}": clt[layer, 1:].numpy() for layer in range(clt.shape[0])}
        for n in SAE_LAYERS:
            doc[f"sae/{n}"] = cache[f"blocks.{n}.hook_resid_post.hook_sae_acts_post"][0, 1:].numpy()
        out.append((tokens[1:].numpy(), doc))
    return out


def block(features, matrix: np.ndarray, name: str) -> np.ndarray:
    start = features.index.offsets[name]
    return matrix[:, start:start + features.index.widths[name]]


def test_tokens_and_pooled_equal_upstream(session, reference):
    from qwen_interp.apps.applications.docpass import PassConfig, document_features
    config = PassConfig(batch_size=3, chunk_docs=2)
    tokens = document_features(session, TEXTS, config=config, mode="tokens", progress=False)
    pooled = document_features(session, TEXTS, config=config, progress=False)
    assert list(tokens.n_tokens) == [len(ids) for ids, _ in reference]
    assert tokens.doc_offsets[-1] == tokens.tokens.shape[0] == sum(tokens.n_tokens)
    assert list(tokens.index.widths) == ["clt/0", "clt/1", "clt/2", "sae/0", "sae/2"]
    for i, (ids, doc) in enumerate(reference):
        assert np.array_equal(tokens.token_ids[tokens.doc_offsets[i]:tokens.doc_offsets[i + 1]],
                              ids)
        mine = tokens.document_tokens(i).toarray()
        row = pooled.pooled[i].toarray()
        for name, expected in doc.items():
            np.testing.assert_allclose(block(tokens, mine, name), expected, atol=ATOL,
                                       rtol=0, err_msg=f"doc {i} {name}")
            np.testing.assert_allclose(block(pooled, row, name)[0], expected.max(0), atol=ATOL,
                                       rtol=0, err_msg=f"doc {i} {name} pooled")
    # something fires in every block, so the comparison is not between zeros
    assert all(np.abs(doc[name]).max() > 0 for _, doc in reference for name in doc)


def test_pooled_from_tokens_and_threshold(session):
    from qwen_interp.apps.applications.docpass import (PassConfig, document_features,
                                                       pooled_from_tokens)
    tokens = document_features(session, TEXTS, mode="tokens", progress=False)
    pooled = document_features(session, TEXTS, progress=False).pooled
    assert abs(pooled_from_tokens(tokens) - pooled).max() <= ATOL
    high = document_features(session, TEXTS, config=PassConfig(threshold=0.5),
                             progress=False).pooled
    expected = pooled.toarray()
    expected[expected <= 0.5] = 0
    np.testing.assert_allclose(high.toarray(), expected, atol=ATOL, rtol=0)
    assert 0 < high.nnz < pooled.nnz


def test_truncation_is_counted_and_cut(session):
    from qwen_interp.apps.applications.docpass import PassConfig, document_features
    out = document_features(session, TEXTS, config=PassConfig(max_tokens=4), mode="tokens",
                            progress=False)
    assert out.truncated == 3  # the three texts of more than 3 tokens
    assert list(out.n_tokens) == [3, 1, 3, 3, 3]


@pytest.mark.parametrize("texts, message", [
    (["fine", ""], "text 1"),
    (["fine", "   "], "text 1"),
    ([], "no texts"),
])
def test_bad_texts_name_the_row(session, texts, message):
    from qwen_interp.apps.applications.docpass import document_features
    with pytest.raises(ValueError, match=message):
        document_features(session, texts, progress=False)


@pytest.mark.parametrize("field, value", [("max_tokens", 1), ("batch_size", 0),
                                          ("chunk_docs", 0), ("threshold", -1.0)])
def test_bad_pass_settings(session, field, value):
    from qwen_interp.apps.applications.docpass import PassConfig, document_features
    with pytest.raises(ValueError, match=field):
        document_features(session, TEXTS, config=PassConfig(**{field: value}), progress=False)


def test_feature_index_names(session):
    from qwen_interp.apps.applications.model import feature_index
    index = feature_index(session)
    assert index.size == 3 * 32 + 2 * 256
    assert index.name(0) == "clt/0:0" and index.name(95) == "clt/2:31"
    assert index.name(96) == "sae/0:0" and index.name(index.size - 1) == "sae/2:255"
    assert index.column("sae/2:5") == 96 + 256 + 5
    assert index.split("clt/1:7") == ("clt", 1, 7)
    for bad in ("sae/1:0", "sae/2:256", "clt/0", "sae/2:x"):
        with pytest.raises(ValueError, match="feature"):
            index.column(bad)
    with pytest.raises(IndexError):
        index.name(index.size)


def test_ray_equals_in_process(session, model_config):
    """Bit for bit, given the same threads per process: Ray's CPU actors run one torch thread
    each (ray_backend), and a matmul's float rounding depends on how it is split over threads."""
    from qwen_interp.apps.applications.docpass import PassConfig, document_features
    config = PassConfig(batch_size=2, chunk_docs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = document_features(session, TEXTS, config=config, mode="tokens", progress=False)
    finally:
        torch.set_num_threads(threads)
    there = document_features(session, TEXTS, config=config, mode="tokens", progress=False,
                              model_config=model_config, ray_address="local", workers=2)
    assert here.tokens.nnz > 0 and (here.tokens != there.tokens).nnz == 0  # the same bits
    assert np.array_equal(here.doc_offsets, there.doc_offsets)
    assert all(sae.W_enc.device.type == "cpu" for sae in session.saes.values())
