"""The anomaly detectors (code-switching, repetition) on hand-made cases with the genuine Qwen3
tokenizer, and the enrichment statistic against a hand computation and scipy's Fisher test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from qwen_interp.apps.applications import detectors as D
from qwen_interp.apps.applications.anomalies import benjamini_hochberg, enrichment
from qwen_interp.apps.applications.model import FeatureIndex


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from qwen_interp.apps.testing.hub import qwen_tokenizer_dir
    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("char, script", [("a", "Latin"), ("é", "Latin"), ("Ａ", "Latin"),
                                          ("萨", "Han"), ("Ж", "Cyrillic"), ("ب", "Arabic"),
                                          ("ひ", "Hiragana"), ("한", "Hangul"), ("7", "Common"),
                                          (" ", "Common"), ("。", "Common"), ("\ufffd", "Common")])
def test_character_scripts(char, script):
    assert D.char_script(char) == script


def test_byte_tokens_join_the_script_of_the_character_they_spell(tok):
    text = "Hello 萨科齐 and 龘."
    t = ids(tok, text)
    pieces = [tok.decode([i]) for i in t]
    assert "\ufffd" in "".join(pieces)  # Qwen spells some CJK characters in byte tokens
    scripts = D.token_scripts(tok, t)
    expected = ["Latin" if p.strip().isascii() and p.strip() not in ("", ".") else None
                for p in pieces]
    for piece, script, want in zip(pieces, scripts, expected, strict=True):
        if "\ufffd" in piece or any("\u4e00" <= c <= "\u9fff" for c in piece):
            assert script == "Han", (piece, script)
        elif want:
            assert script == want, (piece, script)
    assert scripts[-1] == "Han"  # the period inherits the script before it
    # byte tokens of one character concatenate back to that character
    chars = D.token_characters(D.token_bytes(tok, t))
    assert all(c for c in chars)


def test_code_switching_flags_exactly_the_foreign_tokens(tok):
    english, han = "The president of France in 2010 was", " 萨科齐"
    t_en, t_han = ids(tok, english), ids(tok, han)
    t_tail = ids(tok, " and then Paris")
    t = t_en + t_han + t_tail
    assert ids(tok, english + han + " and then Paris") == t  # no merge across the joins
    mask = D.code_switching_mask(tok, t)
    assert mask.tolist() == [False] * len(t_en) + [True] * len(t_han) + [False] * len(t_tail)
    # a Chinese document: the Latin word is the switch
    t2 = ids(tok, "我们喜欢 Paris 和 巴黎")
    scripts = D.token_scripts(tok, t2)
    assert D.dominant_script(scripts) == "Han"
    flagged = [tok.decode([i]) for i, m in zip(t2, D.code_switching_mask(tok, t2)) if m]
    assert flagged == [" Paris"]
    assert not D.code_switching_mask(tok, ids(tok, "2010, 2011!")).any()  # all Common


def test_repetition_flags_the_third_occurrence_on(tok):
    a, b, c, d, e = 1, 2, 3, 4, 5
    loop = [a, b, c, d] * 3
    assert D.repetition_mask(loop).astype(int).tolist() == [0] * 8 + [1] * 4
    # every occurrence from the third flags its tokens: 4 copies flag the last 8 tokens
    assert D.repetition_mask([a, b, c, d] * 4).astype(int).tolist() == [0] * 8 + [1] * 8
    # a run of one token: the 4-gram (x,x,x,x) occurs at every start from 0
    assert D.repetition_mask([e] * 7).astype(int).tolist() == [0, 0, 1, 1, 1, 1, 1]
    # two occurrences only: nothing; with repeats 2: the second one
    assert not D.repetition_mask([a, b, c, d, e, a, b, c, d]).any()
    assert D.repetition_mask([a, b, c, d, e, a, b, c, d], repeats=2).astype(int).tolist() == [
        0, 0, 0, 0, 0, 1, 1, 1, 1]
    # a window that forgets the first occurrence
    far = [a, b] + [9, 8, 7, 6, 5] + [a, b] + [9, 8, 7, 6, 5] + [a, b]
    assert D.repetition_mask(far, n=2, repeats=3).astype(int).tolist()[-2:] == [1, 1]
    assert not D.repetition_mask(far, n=2, repeats=3, window=10).any()
    # the demo's looping greedy output, in real tokens
    t = ids(tok, " François François François François François François")
    assert D.repetition_mask(t).astype(int).tolist() == [0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="at least 1"):
        D.repetition_mask(t, n=0)


def test_enrichment_against_a_hand_computation():
    from scipy.stats import fisher_exact
    rng = np.random.default_rng(0)
    n, flagged = 60, np.zeros(60, dtype=bool)
    flagged[:12] = True
    dense = np.zeros((n, 4), dtype=np.float32)
    dense[:12, 0] = 1.0  # fires on every flagged token only
    dense[rng.random(n) < 0.3, 1] = 0.5  # noise
    dense[10:30, 2] = 2.0  # 2 flagged, 18 clean: under-represented
    rows = enrichment(sp.csr_matrix(dense), flagged, FeatureIndex({"sae/0": 4}))
    names = [r.feature for r in rows]
    assert names[0] == "sae/0:0" and "sae/0:2" not in names and "sae/0:3" not in names
    best = rows[0]
    table = [[12, 0], [0, 48]]
    assert best.p_value == pytest.approx(fisher_exact(table, alternative="greater")[1], rel=1e-9)
    assert best.log_odds == pytest.approx(np.log(12.5 * 48.5 / (0.5 * 0.5)))
    assert (best.flagged_fires, best.clean_fires, best.flagged_rate, best.clean_rate) == (
        12, 0, 1.0, 0.0)
    for r in rows:
        a, b = r.flagged_fires, r.clean_fires
        p = fisher_exact([[a, b], [12 - a, 48 - b]], alternative="greater")[1]
        assert r.p_value == pytest.approx(p, rel=1e-9)


def test_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.06, 0.0533, 0.5 -> monotone from the top
    assert benjamini_hochberg(p) == pytest.approx([0.04, 0.05333333, 0.05333333, 0.5])
