"""The Explorer in a real browser (headless Chromium, tests/browser.py): circuit-tracer's graph
viewer and the Explorer's own pages, against the real server on data built the real way, with no
request leaving the machine.

Data: the small offline Qwen3-1.7B-Base with its stand-in CLT and a tiny Qwen-Scope-format SAE
(``stand_in_dictionaries``) in one :class:`Session`; feature statistics by
``features.job.compute`` on a tiny corpus; a graph by circuit-tracer's ``attribute`` on the same
session and ``create_graph_files``. Expected values come from those files and from the session
itself (``Session.run``, ``model.generate``), never from the Explorer's answers alone.

After every test, every URL the page requested must have the Explorer's origin (data:/blob:
allowed) and no answer may be a server error. Screenshots go to
``$QWEN_INTERP_TEST_ARTIFACTS/explorer/`` and are checked to be non-blank; with
``QWEN_INTERP_TEST_README_IMAGES=docs/images`` the graph and feature screenshots are also written
there as ``explorer-graph.png`` and ``explorer-feature.png`` (the README's).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections import Counter

import pytest

import explorer_data
from browser import Browser, origin, require_browser
from helpers import SEED_PROMPT, stand_in_dictionaries

MODEL = explorer_data.MODEL
CLT = explorer_data.TRANSCODER
SLUG = explorer_data.SLUG
CLT_NODE = "cross layer transcoder"


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(qwen_offline_hub, qwen_registry, tmp_path_factory):
    require_browser()  # before a minute of building: a missing browser fails at once
    with stand_in_dictionaries(qwen_offline_hub, qwen_registry) as release:
        yield explorer_data.build(release, tmp_path_factory.mktemp("explorer"))


@pytest.fixture(scope="module")
def server(data):
    from qwen_interp.apps.explorer import Explorer, start_server
    running = start_server(Explorer(data.graphs, data.features, data.session, model=MODEL,
                                    transcoder=CLT))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(server):
    b = Browser(server.url)
    yield b
    b.close()


@pytest.fixture(autouse=True)
def only_local_requests(browser):
    """Each test starts with an empty record and ends with every request on the Explorer."""
    browser.reset_record()
    yield
    browser.assert_only_local()
    browser.origins = {origin(browser.base)}


# --- helpers --------------------------------------------------------------------------------------
def viewer_text(tokens: list[str]) -> str:
    """The text circuit-tracer's viewer (and the Explorer) shows for a token window: tokens that
    are "\\xNN" byte escapes joined with up to 4 following tokens into the character they spell
    (``mergeHexEscapedMax`` in init-feature-examples-list.js), the others as they are."""
    def raw(token: str) -> bytes:
        out, i = bytearray(), 0
        while i < len(token):
            if re.match(r"\\x[0-9a-fA-F]{2}", token[i:i + 4]):
                out.append(int(token[i + 2:i + 4], 16))
                i += 4
            else:
                out += token[i].encode()
                i += 1
        return bytes(out)
    pieces, i = [], 0
    while i < len(tokens):
        if re.search(r"\\x[0-9a-fA-F]{2}", tokens[i]):
            buf = raw(tokens[i])
            for j in range(i + 1, min(i + 5, len(tokens))):
                buf += raw(tokens[j])
                try:
                    pieces.append(buf.decode("utf-8"))
                except UnicodeDecodeError:
                    continue
                i = j + 1
                break
            else:
                pieces.append(tokens[i])
                i += 1
        else:
            pieces.append(tokens[i])
            i += 1
    return "".join(pieces)


def api(server, path: str, body: dict | None = None) -> tuple[int, dict]:
    """(status, JSON) of a request to the Explorer from Python."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def session_ranking(session, text: str, k: int) -> list[tuple[str, int, int, float]]:
    """The k (dict, layer, feature, max) with the largest activation over ``text``, from one
    ``Session.run``: CLT at every layer and every attached SAE, the first position (the
    ``<|endoftext|>`` circuit-tracer prepends) left out."""
    out = session.run(text, logits=False)
    rows = []
    for layer in range(out.clt_features.shape[0]):
        best = out.clt_features[layer, 0, 1:].amax(0)
        rows += [("clt", layer, f, v) for f, v in enumerate(best.tolist())]
    for layer, acts in out.sae_features.items():
        rows += [("sae", layer, f, v) for f, v in enumerate(acts[0, 1:].amax(0).tolist())]
    rows.sort(key=lambda r: -r[3])
    return [r for r in rows[:k] if r[3] > 0]


def session_max(session, text: str) -> dict[tuple[str, int, int], float]:
    out = session.run(text, logits=False)
    found = {}
    for layer in range(out.clt_features.shape[0]):
        for f, v in enumerate(out.clt_features[layer, 0, 1:].amax(0).tolist()):
            found["clt", layer, f] = v
    for layer, acts in out.sae_features.items():
        for f, v in enumerate(acts[0, 1:].amax(0).tolist()):
            found["sae", layer, f] = v
    return found


def table_rows(browser, css: str) -> list[dict]:
    """The rows of a results table: dict, layer, feature (from the link) and numeric cells."""
    return browser.js("""
        return [...document.querySelectorAll(arguments[0])].map(tr => {
          var cell = c => tr.querySelector(c) ? tr.querySelector(c).textContent : null;
          var link = tr.querySelector('a.feature-link');
          var q = new URL(link.href).searchParams;
          return {dict: q.get('dict'), layer: +q.get('layer'), feature: +q.get('feature'),
                  shown: cell('td.dict'), max: cell('td.max'), a: cell('td.a'), b: cell('td.b'),
                  diff: cell('td.diff')};
        })""", css)


def page_errors(browser) -> list[str]:
    """Console errors of the page, leaving out the browser's own favicon request."""
    return [e["message"] for e in browser.console_entries()
            if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]


def with_examples(data, dictionary: str, layer: int, feature: int) -> bool:
    record = data.record(dictionary, layer, feature)
    return any(q["examples"] for q in record["examples_quantiles"])


def fill(element, text: str) -> None:
    element.clear()
    element.send_keys(text)


# --- the browser itself ---------------------------------------------------------------------------
def test_the_browser_reaches_nothing_but_loopback(browser):
    browser.open("/")
    browser.find("#graphs .graph")
    outcomes = browser.driver.execute_async_script("""
        var done = arguments[arguments.length - 1];
        Promise.all([...arguments].slice(0, -1).map(url => fetch(url, {mode: 'no-cors'})
          .then(r => 'reached ' + url, e => 'failed'))).then(done)""",
        "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js", "http://example.com/")
    assert outcomes == ["failed", "failed"]
    # The record sees such attempts (so the check after each test would catch them) ...
    assert browser.foreign_requests() == ["https://unpkg.com/dagre@0.8.5/dist/dagre.min.js",
                                          "http://example.com/"]
    # ... and the Explorer's own requests succeed through the same settings.
    browser.reset_record()
    browser.open("/")
    browser.find("#graphs .graph")
    assert any(r["url"].endswith("/api/info") and r["status"] == 200
               for r in browser.recorded())


# --- (a) the graph page ---------------------------------------------------------------------------
def drawn_nodes(browser) -> list[tuple[str, str]]:
    """(node_id, feature_type) of each node the viewer's link graph draws. init-cg-link-graph.js
    draws exactly one ``text.node`` per node it keeps (``c.svg.appendMany('text.node', nodes)``),
    each bound by d3 to its node object; the subgraph and the tooltips draw other elements. Node
    ids alone are not unique: circuit-tracer 0.5.0 names an error node ``0_{layer}_{pos}``, the
    id of layer 0's feature ``layer`` at the same position (graph_models.py)."""
    return [tuple(pair) for pair in browser.js(
        "return [...document.querySelectorAll('.link-graph text.node')]"
        ".map(e => [e.__data__.node_id, e.__data__.feature_type])")]


def open_graph(browser, query: str = "") -> list[tuple[str, str]]:
    """Open the graph page and wait for its nodes; an uncaught script error fails at once."""
    def ready(driver):
        crashed = [m for m in page_errors(browser) if "Uncaught" in m]
        assert not crashed, f"the graph viewer failed: {crashed}"
        return drawn_nodes(browser)
    browser.open(f"/graph/?slug={SLUG}{query}")
    browser.wait(ready, 30, "the link graph's nodes")
    return drawn_nodes(browser)


def test_graph_page_draws_every_node_of_the_graph(browser, data):
    graph = data.graph_json()
    nodes = graph["nodes"]
    threshold = graph["metadata"]["node_threshold"]
    # Without a pruningThreshold parameter the viewer prunes at the graph's node_threshold
    # (util-cg.js formatData: embeddings and logits stay, other nodes need influence <= it),
    # so the default view draws each of those nodes once ...
    shown = open_graph(browser)
    expected = [(n["node_id"], n["feature_type"]) for n in nodes
                if n["feature_type"] in ("embedding", "logit") or n["influence"] <= threshold]
    assert sorted(shown) == sorted(expected)
    browser.screenshot("graph")
    # ... and with pruning off (a threshold above any cumulative influence, which is at most 1)
    # every node of the graph file is drawn, once.
    everything = open_graph(browser, "&pruningThreshold=2")
    assert sorted(everything) == sorted((n["node_id"], n["feature_type"]) for n in nodes)
    assert len(everything) == len(nodes)
    assert any(n["feature_type"] == CLT_NODE for n in nodes)


def test_the_page_has_every_d3_name_and_jetpack_method_the_viewer_calls(browser):
    """Every ``d3.<name>`` and every jetpack selection method the installed viewer's scripts
    call exists on the page: d3 7.9.0 from npm plus static/explorer/jetpack-compat.js stand in
    for transformer-circuits.pub's d3 and Anthropic's jetpack fork."""
    from qwen_interp.apps.explorer import viewer
    assets = viewer.assets_dir()
    sources = "\n".join(p.read_text() for p in [
        assets / "index.html", assets / "util.js", *assets.glob("attribution_graph/**/*.js"),
        *assets.glob("feature_examples/*.js")])
    code = re.sub(r"(?<![:'\"])//[^\n]*", "", re.sub(r"/\*.*?\*/", "", sources, flags=re.S))
    names = sorted(set(re.findall(r"\bd3\.([A-Za-z_]\w*)", code)) - {"js"})  # d3.js: a URL
    methods = [m for m in ("append", "appendMany", "at", "st", "translate", "parent",
                          "selectAppend") if f".{m}(" in code]
    open_graph(browser)
    missing = browser.js("""
        return arguments[0].filter(n => d3[n] === undefined)
          .concat(arguments[1].filter(m => typeof d3.selection.prototype[m] !== 'function')
                  .map(m => 'selection.' + m))""", names, methods)
    assert missing == [] and len(names) > 30


# --- (b) a feature node's panel reads the local sidecar -------------------------------------------
def test_clicking_a_feature_node_shows_its_examples_from_the_sidecar(browser, data):
    from selenium.webdriver.common.action_chains import ActionChains

    from qwen_interp.apps.features.sidecar import cantor_unpair
    open_graph(browser)
    nodes = data.graph_json()["nodes"]
    ids = Counter(n["node_id"] for n in nodes)
    by_id = {n["node_id"]: n for n in nodes if ids[n["node_id"]] == 1}  # see drawn_nodes
    candidates = [i for i, n in by_id.items() if n["feature_type"] == CLT_NODE
                  and with_examples(data, "clt", *cantor_unpair(n["feature"]))]
    assert candidates, "no feature node of the graph fired on the corpus"
    # The viewer picks the node nearest the pointer: aim at the candidate farthest from others.
    index, gap = browser.js("""
        var els = [...document.querySelectorAll('.link-graph text.node')];
        var at = els.map(e => { var r = e.getBoundingClientRect();
                                return [r.x + r.width / 2, r.y + r.height / 2]; });
        var best = [-1, -1];
        els.forEach((e, i) => {
          if (!arguments[0].includes(e.__data__.node_id)) return;
          var gap = Math.min(...at.map((p, j) => j === i ? Infinity
                                       : Math.hypot(p[0] - at[i][0], p[1] - at[i][1])));
          if (gap > best[1]) best = [i, gap];
        });
        return best""", candidates)
    assert index >= 0 and gap > 4, (index, gap)
    element = browser.find_all(".link-graph text.node")[index]
    node = by_id[browser.js("return arguments[0].__data__.node_id", element)]
    ActionChains(browser.driver).move_to_element(element).click().perform()
    clicked = browser.wait(lambda d: browser.js(
        "var e = document.querySelector('.link-graph text.node.clicked');"
        "return e && e.__data__.node_id"), 10, "the clicked node")
    assert clicked == node["node_id"]

    layer, feature = cantor_unpair(node["feature"])
    assert node["node_id"].split("_")[:2] == [str(layer), str(feature)]
    record = data.record("clt", layer, feature)
    expected = [viewer_text(ex["tokens"]) for q in record["examples_quantiles"]
                for ex in q["examples"]]
    panel = ".feature-detail .feature-example-list"
    shown = browser.wait(lambda d: browser.js(
        "var s = [...document.querySelectorAll(arguments[0] + ' .ctx-container .text-wrapper')]"
        ".map(e => e.textContent); return s.length ? s : null", panel) == expected and expected,
        20, f"the panel's examples of L{layer}/{feature}")
    assert shown == expected
    titles = [t.text.strip() for t in browser.find_all(f"{panel} .quantile-title")]
    assert titles == [q["quantile_name"] for q in record["examples_quantiles"]]
    # The panel's data came from this server's sidecar, by range reads.
    urls = [r["url"] for r in browser.recorded()]
    assert any(u.endswith("/features/index.json.gz") for u in urls), urls
    assert any(u.endswith(f"/features/layer_{layer}.bin") for u in urls), urls
    browser.screenshot("graph-feature-panel", readme_name="explorer-graph.png")


# --- (c) feature pages ----------------------------------------------------------------------------
def feature_with_examples(data, dictionary: str, layer: int) -> int:
    import gzip
    folder = data.features / ("features" if dictionary == "clt" else "sae_features")
    index = json.loads(gzip.decompress((folder / "index.json.gz").read_bytes()))
    width = len(index[str(layer)]["offsets"]) - 1
    return max(range(width), key=lambda f: (
        sum(len(q["examples"]) for q in data.record(dictionary, layer, f)["examples_quantiles"]),
        len(data.record(dictionary, layer, f)["coactive"]), -f))


def check_feature_page(browser, data, dictionary: str, layer: int, feature: int) -> dict:
    record = data.record(dictionary, layer, feature)
    browser.open(f"/feature?dict={dictionary}&layer={layer}&feature={feature}")
    browser.wait(lambda d: browser.js("return document.body.dataset.loaded"), 20,
                 "the feature page")
    title = browser.find("#feature-title").text
    assert f"layer {layer}" in title and f"feature {feature}" in title
    assert dictionary.upper() in title
    assert browser.find("#act-max").text == f"{record['act_max']:.3f}"
    frequency = float(browser.find("#activation-frequency").text.split()[0])
    assert frequency == pytest.approx(record["activation_frequency"] * 100, rel=1e-2)

    # Examples: one .example per record example, in order, with the example's own token outlined
    groups = [q for q in record["examples_quantiles"] if q["examples"]]
    titles = [t.get_attribute("textContent") for t in browser.find_all("#examples .quantile-title")]
    assert titles == [q["quantile_name"] for q in groups]
    shown = browser.js("""return [...document.querySelectorAll('#examples .example')].map(e => ({
        text: e.textContent,
        focus: [...e.querySelectorAll('.token.focus')].map(t => t.textContent),
        tokens: [...e.querySelectorAll('.token')].map(t => ({
            act: t.dataset.act === undefined ? null : +t.dataset.act,
            alpha: (getComputedStyle(t).backgroundColor.match(/[\\d.]+/g) || [0, 0, 0, 0])
                   .map(Number)[3] ?? 1}))}))""")
    examples = [ex for q in groups for ex in q["examples"]]
    assert len(shown) == len(examples) > 0
    for got, ex in zip(shown, examples, strict=True):
        assert got["text"] == viewer_text(ex["tokens"])
        assert got["focus"] == [viewer_text([ex["tokens"][ex["train_token_ind"]]])]
        # background intensity grows with activation / act_max; no background at 0
        acts = [t["act"] for t in got["tokens"]]
        alphas = [t["alpha"] for t in got["tokens"]]
        for a, alpha in zip(acts, alphas, strict=True):
            assert (alpha > 0) == (a > 0), (acts, alphas)
        order = sorted(range(len(acts)), key=lambda i: acts[i])
        assert [alphas[i] for i in order] == sorted(alphas), (acts, alphas)

    # The histogram: one bar per bin (50), heights proportional to the record's counts
    bars = browser.js("""return [...document.querySelectorAll('#histogram rect')].map(r => ({
        count: +r.getAttribute('data-count'), height: +r.getAttribute('height'),
        x: +r.getAttribute('x')}))""")
    assert [b["count"] for b in bars] == record["histogram"] and len(bars) == 50
    top = max(record["histogram"])
    tallest = max(b["height"] for b in bars)
    for b in bars:
        assert b["height"] == pytest.approx(tallest * b["count"] / top, abs=0.5)
    assert [b["x"] for b in bars] == sorted(b["x"] for b in bars)

    top_logits = [e.text for e in browser.find_all("#top-logits .logit")]
    assert len(top_logits) == len(record["top_logits"])
    assert len(browser.find_all("#bottom-logits .logit")) == len(record["bottom_logits"])
    coactive = browser.js("return [...document.querySelectorAll('#coactive a.feature-link')]"
                          ".map(a => a.getAttribute('href'))")
    assert coactive == [f"/feature?dict={dictionary}&layer={layer}&feature={c['feature']}"
                        for c in record["coactive"]]
    assert page_errors(browser) == []
    return record


def test_feature_page_shows_the_records_examples_and_histogram(browser, data):
    feature = feature_with_examples(data, "clt", 1)
    check_feature_page(browser, data, "clt", 1, feature)
    nav = {e.get_attribute("id"): e.get_attribute("href") for e in
           browser.find_all("#feature-nav a")}
    if feature > 0:
        assert nav["prev-feature"].endswith(f"/feature?dict=clt&layer=1&feature={feature - 1}")
    browser.screenshot("feature", readme_name="explorer-feature.png")


def test_sae_feature_page_and_a_missing_feature(browser, data, server):
    check_feature_page(browser, data, "sae", 2, feature_with_examples(data, "sae", 2))
    width = data.session.model.transcoders.d_transcoder
    status, answer = api(server, f"/api/feature?dict=clt&layer=0&feature={width}")
    assert status == 404
    browser.open(f"/feature?dict=clt&layer=0&feature={width}")
    error = browser.find("#feature-error .error")
    assert error.text == answer["error"]
    assert browser.find_all("#feature-body")[0].is_displayed() is False


# --- the home page --------------------------------------------------------------------------------
def test_home_page_lists_graphs_and_finds_features_by_id(browser, data):
    browser.open("/")
    link = browser.find("#graphs .graph a")
    assert link.get_attribute("href").endswith(f"/graph/?slug={SLUG}")
    assert browser.find("#model").text == MODEL
    dictionaries = browser.find("#dictionaries").text
    assert CLT in dictionaries and data.release.release in dictionaries
    browser.screenshot("index")

    fill(browser.find("#feature-query"), "hello there")
    browser.find("#feature-search button").click()
    assert browser.find("#feature-search-message .error").text.startswith(
        'no feature id in "hello there"')

    fill(browser.find("#feature-query"), "L1/3")
    browser.find("#feature-search button").click()
    browser.wait(lambda d: "/feature?" in d.current_url, 10, "the feature page")
    assert browser.driver.current_url.endswith("/feature?dict=clt&layer=1&feature=3")
    browser.find("#feature-title")
    browser.wait(lambda d: browser.js("return document.body.dataset.loaded"), 20, "its record")
    assert page_errors(browser) == []


# --- (d) text search ------------------------------------------------------------------------------
def test_text_search_ranks_features_as_the_session_does(browser, data):
    text = "The old dog slept by the warm door in winter."
    k = 8
    browser.open("/")
    fill(browser.find("#text-query"), text)
    fill(browser.find("#text-k"), str(k))
    browser.find("#text-search-run").click()
    browser.wait(lambda d: browser.find_all("#search-results .result"), 60, "search results")
    rows = table_rows(browser, "#search-results .result")
    expected = session_ranking(data.session, text, k)
    assert len(expected) == k
    assert [(r["dict"], r["layer"], r["feature"]) for r in rows] == [e[:3] for e in expected]
    for row, (_, _, _, value) in zip(rows, expected, strict=True):
        assert float(row["max"]) == pytest.approx(value, abs=6e-4)
    for row in browser.find_all("#search-results .result a.feature-link"):
        assert "/feature?dict=" in row.get_attribute("href")
    assert page_errors(browser) == []


# --- the lab --------------------------------------------------------------------------------------
def test_lab_analyze_colours_each_token_by_the_chosen_feature(browser, data):
    text = " The cat sat on a warm mat."  # a leading space: the tokens keep it
    browser.open("/lab?tab=analyze")
    browser.wait(lambda d: browser.js("return document.body.dataset.ready"), 20, "the lab")
    fill(browser.find("#analyze-text"), text)
    browser.find("#analyze-run").click()
    browser.wait(lambda d: browser.find_all("#analyze-results .result"), 60, "analyze results")
    rows = table_rows(browser, "#analyze-results .result")
    assert [(r["dict"], r["layer"], r["feature"]) for r in rows] == [
        e[:3] for e in session_ranking(data.session, text, 10)]
    assert browser.find("#analyze-tokens .line").get_attribute("textContent") == text

    # choose the third feature: its per-token activations colour the tokens
    browser.find_all("#analyze-results .result td.dict")[2].click()
    chosen = rows[2]
    assert "selected" in browser.find_all("#analyze-results .result")[2].get_attribute("class")
    out = data.session.run(text, logits=False)
    per_token = (out.clt_features[chosen["layer"], 0, 1:, chosen["feature"]]
                 if chosen["dict"] == "clt"
                 else out.sae_features[chosen["layer"]][0, 1:, chosen["feature"]])
    acts = browser.js("return [...document.querySelectorAll('#analyze-tokens .token')]"
                      ".map(t => +t.dataset.act)")
    assert acts == pytest.approx(per_token.tolist(), abs=1e-4)
    assert page_errors(browser) == []


def test_lab_compare_ranks_by_the_difference(browser, data):
    a, b = "The cat sat on a warm mat.", "Rain fell over quiet hills in winter."
    browser.open("/lab?tab=compare")
    browser.wait(lambda d: browser.js("return document.body.dataset.ready"), 20, "the lab")
    fill(browser.find("#compare-a"), a)
    fill(browser.find("#compare-b"), b)
    browser.find("#compare-run").click()
    browser.wait(lambda d: browser.find_all("#compare-results .result"), 60, "compare results")
    rows = table_rows(browser, "#compare-results .result")
    max_a, max_b = session_max(data.session, a), session_max(data.session, b)
    diffs = sorted(((max_a[key] - max_b[key], key) for key in max_a), key=lambda d: -abs(d[0]))
    assert [(r["dict"], r["layer"], r["feature"]) for r in rows] == [key for _, key in
                                                                     diffs[:10]]
    for row in rows:
        key = (row["dict"], row["layer"], row["feature"])
        assert float(row["a"]) == pytest.approx(max_a[key], abs=6e-4)
        assert float(row["b"]) == pytest.approx(max_b[key], abs=6e-4)
        assert float(row["diff"]) == pytest.approx(max_a[key] - max_b[key], abs=1.2e-3)
    assert page_errors(browser) == []


# --- (e) steering ---------------------------------------------------------------------------------
def greedy(session, prompt: str, n: int) -> str:
    tokens = session.tokens(prompt)
    out = session.model.generate(tokens, max_new_tokens=n, do_sample=False,
                                 use_past_kv_cache=True, verbose=False)
    return session.model.tokenizer.decode(out[0, tokens.shape[-1]:].tolist())


def steer_in_the_lab(browser, edits: list[dict], prompt: str, n: int) -> None:
    browser.open("/lab?tab=steer")
    browser.wait(lambda d: browser.js("return document.body.dataset.ready"), 20, "the lab")
    fill(browser.find("#steer-prompt"), prompt)
    fill(browser.find("#steer-max-tokens"), str(n))
    for _ in range(len(edits) - 1):
        browser.find("#steer-add-edit").click()
    for row, edit in zip(browser.find_all("#steer-edits .edit-row"), edits, strict=True):
        from selenium.webdriver.support.ui import Select
        Select(row.find_element("css selector", "select.dict")).select_by_value(edit["dict"])
        for name in ("layer", "feature", "value"):
            fill(row.find_element("css selector", f"input.{name}"), str(edit[name]))
    browser.find("#steer-run").click()


def test_steering_in_the_lab_changes_the_generation(browser, data):
    prompt, n = SEED_PROMPT, 12
    top_clt = next(r for r in session_ranking(data.session, prompt, 50) if r[0] == "clt")
    steer_in_the_lab(browser, [{"dict": "clt", "layer": top_clt[1], "feature": top_clt[2],
                                "value": 60}], prompt, n)
    steered = browser.wait(lambda d: browser.js(
        "var e = document.querySelector('#steer-steered .continuation');"
        "return e && e.textContent"), 120, "the steered generation")
    unsteered = browser.js("return document.querySelector('#steer-unsteered .continuation')"
                           ".textContent")
    assert unsteered == greedy(data.session, prompt, n)
    assert steered and steered != unsteered
    assert browser.find("#steer-unsteered .prompt-part").text == prompt
    browser.screenshot("lab-steer")
    assert page_errors(browser) == []

    # A request the server refuses shows its one-line error in the page.
    steer_in_the_lab(browser, [{"dict": "clt", "layer": 0, "feature": 1, "value": 5},
                               {"dict": "sae", "layer": 2, "feature": 1, "value": 5}], prompt, n)
    error = browser.find("#steer-message .error", timeout=30)
    assert "not both" in error.text


# --- without a live model -------------------------------------------------------------------------
def test_without_a_live_model_the_live_tabs_say_so(browser, data):
    from qwen_interp.apps.explorer import Explorer, start_server
    static = start_server(Explorer(data.graphs, data.features, None))
    browser.origins.add(origin(static.url))
    try:
        browser.driver.get(static.url + "/lab?tab=steer")
        notice = browser.find("#live-disabled")
        assert "No live model" in notice.text
        for button in ("#analyze-run", "#compare-run", "#steer-run"):
            assert not browser.find(button).is_enabled(), button
        browser.driver.get(static.url + "/")
        browser.find("#graphs .graph")
        assert not browser.find("#text-search-run").is_enabled()
        assert "live model" in browser.find("#text-search-message").text
        browser.driver.get(static.url + "/feature?dict=clt&layer=0&feature=0")
        browser.wait(lambda d: browser.js("return document.body.dataset.loaded"), 20,
                     "a feature page without a model")
    finally:
        static.stop()
