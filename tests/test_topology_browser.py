"""The Explorer's /topology page in a real browser (headless Chromium, tests/browser.py), on a
map ``qwen-interp topology``'s own code wrote (planted clusters, 4 layers): it draws as many
nodes as the JSON has, a click shows the node's features with links to their feature pages, no
request leaves the machine, and the screenshot is not blank."""

from __future__ import annotations

import json

import numpy as np
import pytest

from browser import Browser, check_not_blank, origin, require_browser


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    require_browser()
    from qwen_interp.apps.topology.build import Settings, map_features
    from qwen_interp.apps.topology.export import write_map
    from qwen_interp.apps.topology.labels import label_nodes
    from qwen_interp.apps.topology.vectors import from_array
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 32)) * 4
    x = np.concatenate([c + rng.standard_normal((100, 32)) * 0.3 for c in centres])
    tmap = map_features(from_array(x.astype(np.float32), layers=range(4), name="planted"),
                        Settings(resolutions=(2, 4)))
    label_nodes(tmap)
    folder = tmp_path_factory.mktemp("topology")
    json_path, _ = write_map(tmap, folder, "planted")
    (folder / "unrelated.json").write_text("{\"not\": \"a map\"}")
    return folder, json.loads(json_path.read_text())


@pytest.fixture(scope="module")
def browser(maps):
    from qwen_interp.apps.explorer import Explorer, start_server
    server = start_server(Explorer(topology=maps[0]))
    b = Browser(server.url)
    yield b
    b.close()
    server.stop()


def test_page_draws_the_maps_nodes_and_a_click_shows_features(browser, maps):
    _, data = maps
    browser.reset_record()
    browser.open("/topology?level=1")
    level = data["levels"][1]
    browser.wait(lambda d: len(browser.find_all("#topo-svg circle.topo-node")) == level["n_nodes"],
                 message="the nodes of resolution 4")
    assert len(browser.find_all("#topo-svg line.topo-edge")) == level["n_edges"]
    assert browser.find("#topo-count").text.startswith(f"{level['n_nodes']} nodes")
    options = [o.text for o in browser.find_all("#topo-map option")]
    assert options == ["planted (400 clt features, decoder)"]  # unrelated.json left out
    node = max(level["nodes"], key=lambda n: n["size"])
    circle = browser.find(f"#topo-svg circle.topo-node[data-id='{node['id']}']")
    # a mouse click, dispatched on the node itself: overlapping nodes may cover its centre
    browser.js("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", circle)
    browser.wait(lambda d: browser.find_all("#topo-node-members a.topo-member"),
                 message="the node's features")
    links = browser.find_all("#topo-node-members a.topo-member")
    assert len(links) == min(node["size"], 200)
    first = node["members"][0]
    layer, feature = data["dictionary"]["layers"][first // 100], first % 100
    assert links[0].text == f"L{layer}/{feature}"
    assert links[0].get_attribute("href").endswith(
        f"/feature?dict=clt&layer={layer}&feature={feature}")
    assert f"Node {node['id']} · {node['size']} features" in browser.find("#topo-node-title").text
    check_not_blank(browser.screenshot("topology"))
    browser.assert_only_local()
    browser.origins = {origin(browser.base)}


def test_missing_map_is_an_error_on_the_page(browser):
    browser.reset_record()
    status = browser.js("return fetch('/api/topology/map?name=nope').then(r => r.status)")
    assert status == 404
    browser.open("/topology?map=planted&level=0")
    browser.wait(lambda d: browser.find_all("#topo-svg circle.topo-node"), message="level 0")
    browser.assert_only_local()
