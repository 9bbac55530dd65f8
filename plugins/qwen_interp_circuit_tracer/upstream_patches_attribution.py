"""circuit-tracer: this plugin's ``circuit_tracer_attribution`` adapter as a source change. The
three torch-only modules the plugin runs are shipped unchanged; the edits wire them in. Only
``attribute()`` takes the bounded path (``setup_attribution(..., bounded_memory=True)`` ->
``CrossLayerTranscoder.compute_bounded_attribution_components``): the public
``compute_attribution_components`` and a direct ``setup_attribution`` keep upstream's return
values, which upstream's own tests check."""

from __future__ import annotations

import re
from pathlib import Path

from qwen_interp.upstream_patches import (Patch, UpstreamLayoutChanged, add_import,
                                          require_names, require_standalone)

PLUGIN = Path(__file__).parent  # the shipped modules are this plugin's own
MODULES = ("active_decoders.py", "bounded_influences.py", "shared_patterns.py")
# What the edits below import from the shipped modules.
USED = {"active_decoders.py": ("ActiveDecoders", "attribution_components", "scoring_hooks"),
        "bounded_influences.py": ("compute_partial_influences",),
        "shared_patterns.py": ("shared_attention_patterns",)}
CLT = "circuit_tracer/transcoder/cross_layer_transcoder.py"
TL_CONTEXT = "circuit_tracer/attribution/context_transformerlens.py"
NNSIGHT_CONTEXT = "circuit_tracer/attribution/context_nnsight.py"
ATTRIBUTION_DIR = "circuit_tracer/attribution"
TL_ATTRIBUTE = "circuit_tracer/attribution/attribute_transformerlens.py"
# The forward pass attribute() runs under the attribution hooks (group 2: the model variable).
FORWARD = re.compile(r"^( *)with ctx\.install_hooks\((\w+)\):\n +residual = \2\.forward\(",
                     re.MULTILINE)
TL_MODEL = "circuit_tracer/replacement_model/replacement_model_transformerlens.py"
NNSIGHT_MODEL = "circuit_tracer/replacement_model/replacement_model_nnsight.py"
SETUP = "    def setup_attribution(self, inputs: str | torch.Tensor):\n"
# setup_attribution's call of the transcoders (groups: indent, ``self.transcoders`` or
# ``transcoders``, the arguments), up to its closing parenthesis.
COMPONENTS_CALL = re.compile(
    r"^( *)attribution_data = ((?:self\.)?transcoders)\.compute_attribution_components\(\n"
    r" *([^()\n]+?),?\n *\)", re.MULTILINE)
SETUP_DOC = "                batching) for now\n"
# attribute()'s own call: wheel attribute.py, or each backend's attribute_<backend>.py (head).
RUN_SETUP = "    ctx = model.setup_attribution(input_ids)\n"
BOUNDED_NAME = "compute_bounded_attribution_components"
# A new CrossLayerTranscoder method next to compute_attribution_components, which stays as is.
BOUNDED_METHOD = '''
    def compute_bounded_attribution_components(self, inputs, zero_positions: slice = slice(0, 1)):
        """``compute_attribution_components`` as ``attribute()`` uses it, with bounded memory.

        Same activation matrix and encoder vectors, and bit for bit the same reconstruction, but
        ``decoder_vecs`` is an ``ActiveDecoders``: each active (layer, feature) decoder row read
        once, scored in bounded blocks by the attribution contexts. ``decoder_locations`` and
        ``encoder_to_decoder_map`` are empty (there are no per-occurrence rows), so this is not
        a drop-in for ``compute_attribution_components``, which is unchanged.
        """
        from circuit_tracer.attribution.active_decoders import attribution_components

        return attribution_components(self, inputs, zero_positions)
'''


def _plugin_module(name: str) -> str:
    return (PLUGIN / name).read_text()


def _replace(text: str, old: str, new: str, path: str) -> str:
    if old not in text:
        raise UpstreamLayoutChanged(f"{path}: expected text not found: {old.strip()[:60]!r}")
    return text.replace(old, new, 1)


def _add_method_after(text: str, signature: str, method: str, path: str) -> str:
    """Insert ``method`` (source text of one method) after the method that starts at
    ``signature``, before the next method of the class, one blank line on each side."""
    start = text.find(signature)
    if start < 0:
        raise UpstreamLayoutChanged(f"{path}: {signature.strip()!r} not found")
    end = text.find("\n    def ", start + len(signature))
    if end < 0:
        raise UpstreamLayoutChanged(f"{path}: no method after {signature.strip()!r}")
    return text[:end] + "\n" + method.strip("\n") + "\n" + text[end:]


def _bounded_setup(text: str, path: str) -> str:
    """``setup_attribution(inputs, *, bounded_memory=False)``: with ``bounded_memory`` (only
    attribute() passes it) the transcoders' ``compute_bounded_attribution_components`` where
    they have one; without it, exactly upstream's call."""
    text = _replace(text, SETUP, SETUP.replace("):", ", *, bounded_memory: bool = False):"), path)
    doc = ("            bounded_memory (bool): call the transcoders'\n"
           "                ``compute_bounded_attribution_components`` where they have one (as\n"
           "                ``attribute()`` does), else ``compute_attribution_components``\n")
    text = _replace(text, SETUP_DOC, SETUP_DOC + doc, path)
    calls = list(COMPONENTS_CALL.finditer(text))
    if len(calls) != 1:
        raise UpstreamLayoutChanged(f"{path}: expected one `attribution_data = "
                                    f"<transcoders>.compute_attribution_components(`, "
                                    f"found {len(calls)}")
    m = calls[0]
    i, obj, args = m.groups()
    return (text[:m.start()] +
            f"{i}compute = {obj}.compute_attribution_components\n"
            f"{i}if bounded_memory and hasattr({obj}, \"{BOUNDED_NAME}\"):\n"
            f"{i}    compute = {obj}.compute_bounded_attribution_components\n"
            f"{i}attribution_data = compute({args})" + text[m.end():])


def bounded_attribution(root: Path, registry) -> dict[str, str]:
    if (root / "circuit_tracer/attribution/active_decoders.py").exists():
        return {}  # already upstream
    edits = {f"circuit_tracer/attribution/{name}": _plugin_module(name) for name in MODULES}
    for name, names in USED.items():  # the glue below calls these: fail here, not in upstream
        require_standalone(edits[f"circuit_tracer/attribution/{name}"], f"plugin {name}")
        require_names(edits[f"circuit_tracer/attribution/{name}"], names, f"plugin {name}")
    edits[CLT] = _add_method_after(
        (root / CLT).read_text(),
        "    def compute_attribution_components(self, inputs, "
        "zero_positions: slice = slice(0, 1)):\n",
        BOUNDED_METHOD, CLT)
    for rel in (TL_MODEL, NNSIGHT_MODEL):
        edits[rel] = _bounded_setup((root / rel).read_text(), rel)
    tl = (root / TL_CONTEXT).read_text()
    tl = _replace(tl, "from transformer_lens.hook_points import HookPoint\n",
                  "from transformer_lens.hook_points import HookPoint\n\n"
                  "from circuit_tracer.attribution.active_decoders import ActiveDecoders, "
                  "scoring_hooks\n", TL_CONTEXT)
    edits[TL_CONTEXT] = _replace(
        tl, "        return feature_hooks + error_hooks + token_hook\n",
        "        if isinstance(self.decoder_vecs, ActiveDecoders):\n"
        "            feature_hooks = scoring_hooks(self, feature_output_hook)\n"
        "        return feature_hooks + error_hooks + token_hook\n", TL_CONTEXT)
    nn = (root / NNSIGHT_CONTEXT).read_text()
    nn = _replace(nn, "import torch\n", "import torch\n\nfrom circuit_tracer.attribution."
                  "active_decoders import ActiveDecoders\n", NNSIGHT_CONTEXT)
    edits[NNSIGHT_CONTEXT] = _replace(
        nn, "    def compute_feature_attributions(self, layer, grads):\n",
        "    def compute_feature_attributions(self, layer, grads):\n"
        "        if isinstance(self.decoder_vecs, ActiveDecoders):\n"
        "            self.decoder_vecs.score_into(self._batch_buffer, grads, layer)\n"
        "            return\n", NNSIGHT_CONTEXT)
    # compute_partial_influences: imported by attribute.py (0.5.0 wheel) or by each backend's
    # attribute_<backend>.py (upstream head, which splits attribute()).
    graph_import = "from circuit_tracer.graph import Graph, compute_partial_influences\n"
    users = [f"{ATTRIBUTION_DIR}/{f.name}" for f in sorted((root / ATTRIBUTION_DIR).glob("*.py"))
             if graph_import in f.read_text()]
    if not users:
        raise UpstreamLayoutChanged(f"{ATTRIBUTION_DIR}: no module imports "
                                    "compute_partial_influences from circuit_tracer.graph")
    for rel in users:
        text = (root / rel).read_text().replace(graph_import,
                                                "from circuit_tracer.graph import Graph\n")
        edits[rel] = add_import(text, "circuit_tracer.attribution.bounded_influences",
                                "compute_partial_influences", rel)
    callers = [f"{ATTRIBUTION_DIR}/{f.name}" for f in sorted((root / ATTRIBUTION_DIR).glob("*.py"))
               if RUN_SETUP in f.read_text()]
    if not callers:
        raise UpstreamLayoutChanged(f"{ATTRIBUTION_DIR}: no `{RUN_SETUP.strip()}` in attribute()")
    for rel in callers:
        edits[rel] = _replace(edits.get(rel) or (root / rel).read_text(), RUN_SETUP,
                              RUN_SETUP.replace("(input_ids)", "(input_ids, bounded_memory=True)"),
                              rel)
    # The TransformerLens forward pass of attribute(): in the replacement model (0.5.0 wheel) or
    # in attribute_transformerlens.py (upstream head).
    hits = [(rel, m) for rel in (TL_MODEL, TL_ATTRIBUTE) if (root / rel).is_file()
            for m in [FORWARD.search(edits.get(rel) or (root / rel).read_text())] if m]
    if len(hits) != 1:
        raise UpstreamLayoutChanged(f"expected one `with ctx.install_hooks(model): residual = "
                                    f"model.forward(` in {TL_MODEL} or {TL_ATTRIBUTE}, "
                                    f"found {len(hits)}")
    rel, m = hits[0]
    text = edits.get(rel) or (root / rel).read_text()
    indent, model = m.group(1), m.group(2)
    line = f"{indent}with ctx.install_hooks({model}):\n"
    text = (text[:m.start()] + f"{indent}with ctx.install_hooks({model}), "
            f"shared_attention_patterns({model}.blocks):\n" + text[m.start() + len(line):])
    edits[rel] = add_import(text, "circuit_tracer.attribution.shared_patterns",
                            "shared_attention_patterns", rel)
    return edits


PATCH = Patch(
    "bounded-attribution-memory", "attribute(): bounded GPU memory, same graph",
    "For a cross-layer transcoder, `compute_attribution_components` keeps one scaled decoder row "
    "per (active feature occurrence, output layer) and each backward hook gathers "
    "`grads[:, positions]` into a (batch, occurrences, d_model) tensor: with Qwen3-1.7B and a "
    "28 x 20,480 CLT that gather is ~50 GB at batch 256 for a 16-token prompt, and the rows are "
    "133 GB for 1,000 tokens. In `attribute()`, this keeps each active (layer, feature) decoder "
    "row once (`ActiveDecoders`) and scores occurrences position by position with one bmm over a "
    "padded block of at most 256 MB. `compute_attribution_components` keeps its contract "
    "(per-occurrence `decoder_vecs`, `decoder_locations`, `encoder_to_decoder_map`, as "
    "`test_compute_attribution_components` checks) and is unchanged: the bounded components "
    "come from a new `CrossLayerTranscoder.compute_bounded_attribution_components`, which "
    "`setup_attribution` calls only when `attribute()` passes `bounded_memory=True` (a direct "
    "`setup_attribution(inputs)` returns what it did before; per-layer transcoders keep their "
    "scoring). `compute_partial_influences` no longer copies the whole edge "
    "matrix to the GPU; and the TransformerLens backend computes and keeps one frozen attention "
    "pattern per layer instead of one per batch row (the rows are the same prompt). "
    "The elementwise products are unchanged (only dot-product "
    "summation order can differ): on Qwen3 test models (fp32) node sets are identical and "
    "|dA| <= 1e-5 max|A| on both backends, the reconstruction is bit-identical, and "
    "`tests/transcoder/test_cross_layer_transcoder.py` passes (tested in qwen-interp, with "
    "transformer-lens 3.2.1; "
    "4.0 removed `HookedTransformer`, which the TransformerLens backend subclasses, #115).",
    bounded_attribution,
    refs=("#92: long-context OOM on an H100 80GB (2,300+ tokens)",
          "#39: Qwen 14B out of memory in `attribute()` on an H200",
          "#115: transformer-lens 4.0 breaks the TransformerLens backend's import (the memory "
          "bound does not depend on it; tested with 3.2.1)"))
