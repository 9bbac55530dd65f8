"""circuit-tracer's attribution-graph viewer, served offline.

The page's files come from the installed ``circuit_tracer`` package (``frontend/assets``): the
viewer is circuit-tracer's own, at the version installed. Three things change on the way out:

- its ``<script src="https://...">`` tags (d3 and Anthropic's jetpack from transformer-circuits.pub,
  dagre and pako from unpkg) point at the npm copies in ``static/vendor/`` (``vendor.py``) and,
  for the jetpack helpers, at ``static/explorer/jetpack-compat.js``; the hot-reload client and
  the ``.npy`` reader, which the graph page never calls, are dropped. A
  page with any other ``http(s)://`` script or stylesheet is refused, not served half-offline;
- while the installed viewer cannot read features from a local server (the circuit-tracer 0.5.0
  wheel on PyPI asks huggingface.co), ``init-feature-examples.js`` is the v0.5.0 tag's, which
  can (``static/circuit-tracer/SOURCE.json``). Once the installed copy has ``featureUrl``, it
  is used as is;
- each graph's ``scan`` is pointed at the Explorer's own ``/features/`` when the Explorer has
  that CLT's records (``store.py``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

STATIC = Path(__file__).parent / "static"
_CDN = "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/"
# The CDN script each tag loads -> the vendored file that replaces it ("" drops the tag).
SCRIPT_MAP = {
    _CDN + "d3.js": "/vendor/d3.min.js",
    # Anthropic's fork of d3-jetpack is on no registry: the helpers the viewer calls, written for
    # d3 v7 (static/explorer/jetpack-compat.js).
    _CDN + "jetpack_2024-07-20.js": "/static/jetpack-compat.js",
    _CDN + "npy_v0.js": "",  # .npy files: only the `addition` page reads them
    _CDN + "hotserver-client-ws.js": "",  # the authors' live-reload client
    "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js": "/vendor/dagre.min.js",
    "https://unpkg.com/pako@2.1.0/dist/pako.min.js": "/vendor/pako.min.js",
}
_SCRIPT_TAG = re.compile(r"<script src=['\"](https?://[^'\"]+)['\"]></script>\n?")
_EXTERNAL = re.compile(r"""(?:src|href)=['"](?:https?:)?//""")
PAGES = {"index.html", "feature-view.html"}


def assets_dir() -> Path:
    import circuit_tracer
    return Path(circuit_tracer.__file__).parent / "frontend" / "assets"


@functools.cache
def local_features_file() -> Path | None:
    """Upstream v0.5.0's ``init-feature-examples.js`` while the installed one lacks
    ``featureUrl`` (local features); None once it has it."""
    installed = assets_dir() / "feature_examples" / "init-feature-examples.js"
    if "function featureUrl(" in installed.read_text():
        return None
    return STATIC / "circuit-tracer" / "init-feature-examples.js"


def offline_html(text: str, name: str) -> str:
    """``text`` with its CDN scripts replaced by vendored copies; ValueError if anything
    external would still load."""
    def swap(match: re.Match) -> str:
        url = match.group(1)
        if url not in SCRIPT_MAP:
            raise ValueError(f"circuit-tracer's {name} loads {url}, which the Explorer has no "
                             "local copy of (qwen_interp/apps/explorer/viewer.py SCRIPT_MAP)")
        local = SCRIPT_MAP[url]
        return f"<script src='{local}'></script>\n" if local else ""
    out = _SCRIPT_TAG.sub(swap, text)
    leftover = _EXTERNAL.search(out)
    if leftover:
        raise ValueError(f"circuit-tracer's {name} still loads an external resource: "
                         f"{out[leftover.start():leftover.start() + 80]!r}")
    return out


def asset(path: str) -> tuple[bytes, str] | None:
    """The bytes and file name of viewer asset ``path`` (relative, '/'-separated), or None."""
    root = assets_dir().resolve()
    if path in ("", "/"):
        path = "index.html"
    if path == "feature_examples/init-feature-examples.js" and local_features_file():
        file = local_features_file()
    else:
        file = (root / path).resolve()
        if root not in file.parents or not file.is_file():
            return None
    assert file is not None
    if file.name in PAGES and file.parent == root:
        return offline_html(file.read_text(), file.name).encode(), file.name
    return file.read_bytes(), file.name
