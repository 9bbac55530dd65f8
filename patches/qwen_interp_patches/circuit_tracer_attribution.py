"""circuit-tracer: the ``circuit_tracer_attribution`` adapter as a source change. The three
torch-only modules the plugin runs are shipped unchanged; the edits wire them in."""

from __future__ import annotations

import re
from pathlib import Path

from . import (Patch, UpstreamLayoutChanged, add_import, require_names,
               require_standalone)

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "qwen_interp_circuit_tracer"
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


def _plugin_module(name: str) -> str:
    try:
        import qwen_interp_circuit_tracer
        return (Path(qwen_interp_circuit_tracer.__file__).parent / name).read_text()
    except ImportError:  # patches used from a checkout without the plugin installed
        return (PLUGIN / name).read_text()


def _replace(text: str, old: str, new: str, path: str) -> str:
    if old not in text:
        raise UpstreamLayoutChanged(f"{path}: expected text not found: {old.strip()[:60]!r}")
    return text.replace(old, new, 1)


def _replace_method(text: str, signature: str, body: str, path: str) -> str:
    """Replace the method starting at ``signature`` up to the next method of the class."""
    start = text.find(signature)
    if start < 0:
        raise UpstreamLayoutChanged(f"{path}: {signature.strip()!r} not found")
    end = text.find("\n    def ", start + len(signature))
    return text[:start] + signature + body + text[end + 1:]


def bounded_attribution(root: Path, registry) -> dict[str, str]:
    if (root / "circuit_tracer/attribution/active_decoders.py").exists():
        return {}  # already upstream
    edits = {f"circuit_tracer/attribution/{name}": _plugin_module(name) for name in MODULES}
    for name, names in USED.items():  # the glue below calls these: fail here, not in upstream
        require_standalone(edits[f"circuit_tracer/attribution/{name}"], f"plugin {name}")
        require_names(edits[f"circuit_tracer/attribution/{name}"], names, f"plugin {name}")
    edits[CLT] = _replace_method(
        (root / CLT).read_text(),
        "    def compute_attribution_components(self, inputs, zero_positions: slice = slice(0, 1)):\n",
        '        """Active features, their encoder rows, the reconstruction, and the decoder rows\n'
        "        of the active features read once per (layer, feature) (``ActiveDecoders``).\"\"\"\n"
        "        from circuit_tracer.attribution.active_decoders import attribution_components\n\n"
        "        return attribution_components(self, inputs, zero_positions)\n\n", CLT)
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
        text = (root / rel).read_text().replace(graph_import, "from circuit_tracer.graph import Graph\n")
        edits[rel] = add_import(text, "circuit_tracer.attribution.bounded_influences",
                                "compute_partial_influences", rel)
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
    "133 GB for 1,000 tokens. This keeps each active (layer, feature) decoder row once "
    "(`ActiveDecoders`) and scores occurrences position by position with one bmm over a padded "
    "block of at most 256 MB; `compute_partial_influences` no longer copies the whole edge "
    "matrix to the GPU; and the TransformerLens backend computes and keeps one frozen attention "
    "pattern per layer instead of one per batch row (the rows are the same prompt). The elementwise products are unchanged (only dot-product "
    "summation order can differ): on Qwen3 test models (fp32) node sets are identical and "
    "|dA| <= 1e-5 max|A| on both backends (tested in qwen-interp, with transformer-lens 3.2.1; "
    "4.0 removed `HookedTransformer`, which the TransformerLens backend subclasses, #115).",
    bounded_attribution,
    refs=("#92: long-context OOM on an H100 80GB (2,300+ tokens)",
          "#39: Qwen 14B out of memory in `attribute()` on an H200",
          "#115: transformer-lens 4.0 breaks the TransformerLens backend's import (the memory "
          "bound does not depend on it; tested with 3.2.1)"))
