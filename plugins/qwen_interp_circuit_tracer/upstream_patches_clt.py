"""circuit-tracer: BluelightAI's native CLT formats, top-k CLTs and the first position for
string inputs, as source changes.

The new upstream modules are this plugin's own modules, copied verbatim (only
the one import of qwen-interp's base exception is rewritten), so a patch and the plugin cannot
drift apart; what is written here is the glue: where circuit-tracer dispatches to them.
"""

from __future__ import annotations

import ast
from pathlib import Path

from qwen_interp.upstream_patches import UpstreamLayoutChanged, require_names

from .upstream_parts import FIRST_POSITION_LINE

HF_UTILS = "circuit_tracer/utils/hf_utils.py"
TOPK_FILE = "circuit_tracer/transcoder/topk_cross_layer_transcoder.py"
NATIVE_DIR = "circuit_tracer/transcoder/bluelight"
TL_MODEL = "circuit_tracer/replacement_model/replacement_model_transformerlens.py"
NN_MODEL = "circuit_tracer/replacement_model/replacement_model_nnsight.py"
STRING_INPUT_METHODS = ("get_activations", "feature_intervention", "feature_intervention_generate")


def plugin_source(module: str) -> str:
    """The text of this plugin's ``<module>.py``, with a provenance line on top."""
    text = (Path(__file__).parent / f"{module}.py").read_text()
    return (f"# Generated from qwen-interp's circuit_tracer plugin ({module}.py); change it "
            "there.\n" + text)


def is_present(root: Path, rel: str) -> bool:
    return (root / rel).is_file()


def replace_once(text: str, old: str, new: str, path: str) -> str:
    if text.count(old) != 1:
        raise UpstreamLayoutChanged(f"{path}: expected exactly one {old.strip()!r}")
    return text.replace(old, new)


# --- top-k activations ------------------------------------------------------------------------

TOPK_DISPATCH = """\
            if config.get("activation") in ("topk", "topk_all"):  # top-k CLTs
                from functools import partial

                from circuit_tracer.transcoder.topk_cross_layer_transcoder import load_ct_layout

                load_fn = partial(load_ct_layout, activation=config["activation"], k=config["k"])
"""


def add_topk_activation(root: Path, registry) -> dict[str, str]:
    edits = {}
    if not is_present(root, TOPK_FILE):
        # One file upstream: the plugin module may import circuit-tracer, nothing of its own.
        modules = shipped_modules("topk", {})
        if len(modules) > 1:
            raise UpstreamLayoutChanged("plugin topk.py imports other plugin modules; the patch "
                                        "ships it as one file (upstream_patches_clt.py)")
        edits[TOPK_FILE] = modules["topk"]
        require_names(edits[TOPK_FILE], ["load_ct_layout"], "plugin topk.py")
    hf_utils = (root / HF_UTILS).read_text()
    if "topk_cross_layer_transcoder" not in hf_utils:
        anchor = "            load_fn = load_clt\n"
        edits[HF_UTILS] = replace_once(hf_utils, anchor, anchor + TOPK_DISPATCH, HF_UTILS)
    return edits


# --- BluelightAI native formats -------------------------------------------------------------------

NATIVE_INIT = '''\
"""BluelightAI's native cross-layer transcoder checkpoints in circuit-tracer.

BluelightAI's training code writes ``single_file`` (``clt.safetensors``) or ``layer_weights``
(``manifest.json`` + one file per layer) checkpoints described by ``model_config.json`` (v1 or
v2): decoders in ``input_layer`` or ``output_layer`` layout, per-layer norm factors, ReLU /
JumpReLU / top-k activations, optionally ``layer_indices`` (see ``native.py``).
``load_native_clt`` validates such a checkpoint from its safetensors headers, converts it once
into circuit-tracer's own layout under ``get_cache_dir() / ".bluelight-native"`` (norm factors
folded into the weights) and loads that like any hub CLT, so the lazy decoder works on it.
``load_transcoder_from_hub`` calls ``load_native_from_hub`` for a repository with a
``model_config.json`` and no ``config.yaml``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import TranscoderValidationError
from .native import (NativeConfig, is_native, read_native_config, validate_native,
                     write_ct_layout)
from .validate import model_facts

__all__ = ["TranscoderValidationError", "is_native", "load_native_clt", "load_native_from_hub"]

CONVERTER_VERSION = "1"


def _source_key(cfg: NativeConfig) -> str:
    """Changes when the checkpoint (its path, files, sizes, mtimes) or the converter does."""
    h = hashlib.sha256(f"{CONVERTER_VERSION}\\0{cfg.folder.resolve()}".encode())
    for name in sorted({"model_config.json", "manifest.json", *cfg.files}):
        path = cfg.folder / name
        if path.is_file():
            st = path.stat()
            h.update(f"{name}\\0{st.st_size}\\0{st.st_mtime_ns}\\0".encode())
    return h.hexdigest()[:16]


def converted_folder(folder, model_name: str | None = None) -> Path:
    """The circuit-tracer-layout folder of a native checkpoint, converting it the first time.
    Nothing is written if validation fails, and no reader sees a half-written folder."""
    from circuit_tracer.utils.caching import get_cache_dir

    cfg = read_native_config(folder)
    model = model_name or cfg.base_model_name
    facts = model_facts(model)
    validate_native(cfg, facts)
    final = get_cache_dir() / ".bluelight-native" / _source_key(cfg)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        n_model_layers = facts.n_layers if facts else cfg.n_layers  # the base model's count
        write_ct_layout(cfg, tmp, n_model_layers, model)
        try:
            os.rename(tmp, final)  # atomic
        except OSError:
            if not final.is_dir():  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_native_clt(folder, model_name: str | None = None, scan=None, device=None,
                    dtype: torch.dtype = torch.float32, lazy_encoder: bool = False,
                    lazy_decoder: bool = True):
    """A CrossLayerTranscoder from a native checkpoint folder."""
    import yaml

    from circuit_tracer.transcoder.topk_cross_layer_transcoder import load_ct_layout

    converted = converted_folder(folder, model_name)
    config = yaml.safe_load((converted / "config.yaml").read_text())
    return load_ct_layout(converted, activation=config["activation"], k=config["k"],
                          feature_input_hook=config["feature_input_hook"],
                          feature_output_hook=config["feature_output_hook"],
                          scan=scan if scan is not None else str(folder), device=device,
                          dtype=dtype, lazy_decoder=lazy_decoder, lazy_encoder=lazy_encoder)


def load_native_from_hub(hf_uri, device=None, dtype: torch.dtype = torch.float32,
                         lazy_encoder: bool = False, lazy_decoder: bool = True):
    """``(transcoder, config)`` for a native checkpoint on the Hub, or None when ``hf_uri``
    has no ``model_config.json``."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        hf_hub_download(hf_uri.repo_id, "model_config.json", subfolder=hf_uri.file_path,
                        revision=hf_uri.revision)
    except Exception:
        return None
    prefix = f"{hf_uri.file_path}/" if hf_uri.file_path else ""
    local = snapshot_download(hf_uri.repo_id, revision=hf_uri.revision,
                              allow_patterns=[f"{prefix}*.json", f"{prefix}*.safetensors"])
    repo_info = hf_uri.repo_id + (f"//{hf_uri.file_path}" if hf_uri.file_path else "")
    scan = f"{repo_info}@{hf_uri.revision}" if hf_uri.revision else repo_info
    clt = load_native_clt(Path(local) / (hf_uri.file_path or ""), scan=scan, device=device,
                          dtype=dtype, lazy_encoder=lazy_encoder, lazy_decoder=lazy_decoder)
    config = {"model_kind": "cross_layer_transcoder", "format": "bluelight_native",
              "repo_id": hf_uri.repo_id, "revision": hf_uri.revision,
              "subfolder": hf_uri.file_path, "scan": scan,
              "feature_input_hook": clt.feature_input_hook,
              "feature_output_hook": clt.feature_output_hook}
    return clt, config
'''

NATIVE_FALLBACK = """\
        from circuit_tracer.transcoder.bluelight import load_native_from_hub

        # No config.yaml: BluelightAI's native layout (model_config.json) is converted and loaded
        native = load_native_from_hub(hf_uri, device, dtype, lazy_encoder, lazy_decoder)
        if native is not None:
            return native
"""
# Plugin import of qwen-interp's base exception -> a self-contained equivalent.
BASE_EXCEPTION = ("from qwen_interp.errors import CheckpointError\n",
                  "CheckpointError = ValueError  # qwen-interp's CheckpointError is a ValueError\n")


def shipped_modules(start: str, rewrites: dict[str, tuple[str, str]]) -> dict[str, str]:
    """``{module: text}`` of the plugin modules ``start`` needs: itself and, transitively, the
    plugin modules it imports relatively (``from .x import``), each with its ``rewrites`` done.
    Computed from the plugin's current source, so the shipped package follows its changes; an
    import of qwen-interp itself would not exist upstream and fails here."""
    out, todo = {}, [start]
    while todo:
        module = todo.pop()
        if module in out:
            continue
        text = plugin_source(module)
        if module in rewrites:
            text = replace_once(text, *rewrites[module], f"plugin {module}.py")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1 and node.module:
                todo.append(node.module)
            elif node.level or (node.module or "").split(".")[0].startswith("qwen_interp"):
                raise UpstreamLayoutChanged(
                    f"plugin {module}.py imports {'.' * node.level}{node.module or ''}, which "
                    "circuit-tracer does not have: extend the patch (upstream_patches_clt.py)")
        out[module] = text
    return out


def relative_imports(source: str) -> dict[str, list[str]]:
    """``{module: [names]}`` of a source's ``from .module import names``."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.setdefault(node.module, []).extend(a.name for a in node.names)
    return out


def add_bluelight_native(root: Path, registry) -> dict[str, str]:
    edits = {}
    if not is_present(root, f"{NATIVE_DIR}/__init__.py"):
        if not is_present(root, TOPK_FILE):
            raise UpstreamLayoutChanged("the native loader needs the topk-activation patch first")
        edits[f"{NATIVE_DIR}/__init__.py"] = NATIVE_INIT
        modules: dict[str, str] = {}
        for module, names in relative_imports(NATIVE_INIT).items():
            modules.update(shipped_modules(module, {"errors": BASE_EXCEPTION}))
            require_names(modules[module], names, f"plugin {module}.py")
        require_names(plugin_source("topk"), ["load_ct_layout"], "plugin topk.py")
        for module, text in sorted(modules.items()):
            edits[f"{NATIVE_DIR}/{module}.py"] = text
    hf_utils = (root / HF_UTILS).read_text()
    if "load_native_from_hub" not in hf_utils:
        anchor = "    except Exception as e:\n        config_file = (\n"
        new = anchor.replace("        config_file", NATIVE_FALLBACK + "        config_file")
        edits[HF_UTILS] = replace_once(hf_utils, anchor, new, HF_UTILS)
    return edits


# --- first position for string inputs -------------------------------------------------------------

def first_position_block(extra: str = "") -> str:
    return ("        if isinstance(inputs, str):  # the same tokens, first position included, "
            "as attribute()\n"
            f"            {FIRST_POSITION_LINE}\n" + extra)


def insert_at_method_start(text: str, method: str, block: str, path: str) -> str:
    """``block`` as the first statements of ``def method`` (right after its docstring)."""
    start = text.find(f"    def {method}(")
    doc = text.find('"""', start)
    if start < 0 or doc < 0 or "\n    def " in text[start + 1:doc]:
        raise UpstreamLayoutChanged(f"{path}: no docstring'd method {method}")
    body = text.index("\n", text.index('"""', doc + 3)) + 1
    return text[:body] + block + text[body:]


# TransformerLens's generate() reads a 1-D tensor as embeddings and returns tokens for tokens.
TL_GENERATE = ("        generation: str = self.generate(inputs, **kwargs)  # type:ignore\n",
               "        batch = inputs[None] if isinstance(inputs, torch.Tensor) "
               "and inputs.ndim == 1 else inputs\n"
               "        generation: str = self.generate(batch, **kwargs)  # type:ignore\n")
# nnsight counted positions by re-tokenizing the input, which fails for tokens.
NN_N_POS = ("            n_pos = len(self.tokenizer(inputs).input_ids)\n",
            "            n_pos = (\n"
            "                inputs.shape[-1]\n"
            "                if isinstance(inputs, torch.Tensor)\n"
            "                else len(self.tokenizer(inputs).input_ids)\n"
            "            )\n")  # as `ruff format` (upstream's CI) writes it


def add_first_position(root: Path, registry) -> dict[str, str]:
    edits = {}
    for rel, fixes in ((TL_MODEL, (TL_GENERATE,)), (NN_MODEL, (NN_N_POS,))):
        text = original = (root / rel).read_text()
        if FIRST_POSITION_LINE in text:
            continue  # already upstream
        for method in STRING_INPUT_METHODS:
            extra = ('            kwargs.setdefault("return_type", "str")  # a string, as before\n'
                     if rel == TL_MODEL and method == "feature_intervention_generate" else "")
            text = insert_at_method_start(text, method, first_position_block(extra), rel)
        for old, new in fixes:
            text = replace_once(text, old, new, rel)
        if text != original:
            edits[rel] = text
    return edits
