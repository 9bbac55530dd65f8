"""TransformerLens: Qwen3-MoE (``Qwen3MoeForCausalLM``) in ``HookedTransformer``.

The upstream code is cut from this plugin's own source (``moe.py``), so the patch and the
plugin cannot drift apart:

- the MoE block: the body of ``moe.moe_classes()``, appended to ``components/mlps/moe.py``;
- the weight conversion: ``moe.convert_qwen3_moe_weights``, appended to TL's
  ``pretrained/weight_conversions/qwen3.py``;
- the config branch: the body of ``moe.hooked_transformer_config``, inlined as the
  ``Qwen3MoeForCausalLM`` branch of ``convert_hf_model_config``.

Imports the plugin makes inside functions (to keep ``import qwen_interp`` cheap) are merged into
the target file's own imports. New code goes into existing files because ``Patch.apply`` edits
files that exist in the upstream tree.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from pathlib import Path
from typing import TypeGuard

from qwen_interp.upstream_patches import UpstreamLayoutChanged

from .moe import ARCHITECTURE

MOE = "transformer_lens/components/mlps/moe.py"
FACTORY = "transformer_lens/factories/mlp_factory.py"
QWEN3 = "transformer_lens/pretrained/weight_conversions/qwen3.py"
CONVERSIONS = "transformer_lens/pretrained/weight_conversions/__init__.py"
LOADING = "transformer_lens/loading_from_pretrained.py"
HOOKED = "transformer_lens/HookedTransformer.py"

Import = ast.Import | ast.ImportFrom


# --- reading the plugin's source ---------------------------------------------------------------
class _Source:
    """The plugin module's text and syntax tree."""

    def __init__(self) -> None:
        from . import moe
        self.text = inspect.getsource(moe)
        self.tree = ast.parse(self.text)

    def function(self, name: str) -> ast.FunctionDef:
        for node in self.tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                return node
        raise LookupError(f"plugin moe.py has no function {name}")

    def lines(self, first: int, last: int) -> str:
        """Lines ``first``..``last`` (1-based, inclusive), dedented."""
        return textwrap.dedent("".join(self.text.splitlines(keepends=True)[first - 1:last]))

    def node(self, node: ast.stmt) -> str:
        first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
        return self.lines(first, _end(node))


def _end(node: ast.stmt) -> int:
    """``node.end_lineno``, which ``ast.parse`` always sets (None is for hand-built nodes)."""
    assert node.end_lineno is not None
    return node.end_lineno


def _is_import(node: ast.stmt) -> TypeGuard[Import]:
    return isinstance(node, (ast.Import, ast.ImportFrom))


def _module(node: Import) -> str:
    return node.names[0].name if isinstance(node, ast.Import) else node.module or ""


def _isort_key(node: Import) -> tuple[int, bool]:
    """(section, kind): stdlib / third party / transformer_lens, then ``import`` before ``from``
    (isort's black profile, which TransformerLens uses)."""
    top = _module(node).split(".")[0]
    section = 0 if top in sys.stdlib_module_names else 2 if top == "transformer_lens" else 1
    return section, isinstance(node, ast.ImportFrom)


def merge_imports(text: str, imports: list[Import], src: _Source, path: str) -> str:
    """Add to ``text`` (a module) those of ``imports`` it lacks, where isort would put them."""
    tops = [n for n in ast.parse(text).body if _is_import(n)]
    if not tops:
        raise UpstreamLayoutChanged(f"{path}: no imports")
    have = {ast.dump(n) for n in tops}
    lines = text.splitlines(keepends=True)
    inserts: dict[int, list[str]] = {}  # 0-based line index -> lines to insert there
    for imp in imports:
        if ast.dump(imp) in have:
            continue
        group = [n for n in tops if _isort_key(n) == _isort_key(imp)]
        earlier = [n for n in group if _module(n) <= _module(imp)]
        at = (_end(earlier[-1]) if earlier else group[0].lineno - 1 if group
              else _end(tops[-1]))
        inserts.setdefault(at, []).append(src.node(imp))
    for at in sorted(inserts, reverse=True):
        lines[at:at] = inserts[at]
    return "".join(lines)


# --- the pieces --------------------------------------------------------------------------------
def moe_block(src: _Source) -> tuple[list[Import], str, str]:
    """(imports, module-level code, name of the block class) from ``moe_classes()``'s body."""
    body = src.function("moe_classes").body
    ret = body[-1]
    if not (isinstance(ret, ast.Return) and isinstance(ret.value, ast.Tuple)):
        raise UpstreamLayoutChanged("plugin moe_classes() no longer ends by returning its classes")
    block = ret.value.elts[1]
    if not isinstance(block, ast.Name):
        raise UpstreamLayoutChanged("plugin moe_classes() must return its block class by name")
    imports = [n for n in body if _is_import(n)]
    defs = [n for n in body[:-1] if not _is_import(n)]
    if body.index(defs[0]) != len(imports):
        raise UpstreamLayoutChanged("plugin moe_classes(): imports must come first")
    code = "".join("\n\n" + src.node(n) for n in defs)
    return imports, code, block.id


def conversion(src: _Source) -> tuple[list[Import], str]:
    """(imports, source) of ``convert_qwen3_moe_weights`` with its local imports taken out."""
    fn = src.function("convert_qwen3_moe_weights")
    imports = [n for n in fn.body if _is_import(n)]
    skip = {i for n in imports for i in range(n.lineno, _end(n) + 1)}
    lines = [line for i, line in enumerate(src.text.splitlines(keepends=True), 1)
             if fn.lineno <= i <= _end(fn) and i not in skip]
    return imports, "".join(lines)


def config_branch(src: _Source) -> str:
    """``hooked_transformer_config``'s body (docstring and ``return cfg_dict`` left out) as the
    ``Qwen3MoeForCausalLM`` branch of ``convert_hf_model_config``."""
    fn = src.function("hooked_transformer_config")
    doc, ret = fn.body[0], fn.body[-1]
    if not (isinstance(ret, ast.Return) and isinstance(ret.value, ast.Name)
            and ret.value.id == "cfg_dict"):
        raise UpstreamLayoutChanged("plugin hooked_transformer_config must end with "
                                    "return cfg_dict")
    body = src.lines(_end(doc) + 1, ret.lineno - 1).rstrip() + "\n"
    return f'    elif architecture == "{ARCHITECTURE}":\n' + textwrap.indent(body, " " * 8)


# --- the edits ---------------------------------------------------------------------------------
def _replace(text: str, old: str, new: str, path: str) -> str:
    if old not in text:
        raise UpstreamLayoutChanged(f"{path}: {old.strip()[:60]!r} not found")
    return text.replace(old, new, 1)


def edit_moe_component(root: Path, src: _Source) -> dict[str, str]:
    imports, code, block = moe_block(src)
    moe_text = merge_imports((root / MOE).read_text(), imports, src, MOE).rstrip("\n") + "\n"
    factory = (root / FACTORY).read_text()
    factory = _replace(factory, "from transformer_lens.components.mlps.moe import MoE\n",
                       f"from transformer_lens.components.mlps.moe import MoE, {block}\n", FACTORY)
    factory = _replace(factory, "            return MoE(cfg)\n",
                       f'            if cfg.original_architecture == "{ARCHITECTURE}":\n'
                       f"                return {block}(cfg)\n"
                       "            return MoE(cfg)\n", FACTORY)
    return {MOE: moe_text + code, FACTORY: factory}


def edit_conversion(root: Path, src: _Source) -> dict[str, str]:
    imports, code = conversion(src)
    qwen3 = merge_imports((root / QWEN3).read_text(), imports, src, QWEN3).rstrip("\n") + "\n"
    inits = _replace((root / CONVERSIONS).read_text(), "from .qwen3 import convert_qwen3_weights\n",
                     "from .qwen3 import convert_qwen3_moe_weights, convert_qwen3_weights\n",
                     CONVERSIONS)
    return {QWEN3: qwen3 + "\n\n" + code, CONVERSIONS: inits}


def edit_loading(root: Path, src: _Source) -> dict[str, str]:
    text = (root / LOADING).read_text()
    text = _replace(text, "    convert_qwen3_weights,\n",
                    "    convert_qwen3_moe_weights,\n    convert_qwen3_weights,\n", LOADING)
    # The config branch goes right after the dense Qwen3 branch.
    head, sep, tail = text.partition('    elif architecture == "Qwen3ForCausalLM":\n')
    if not sep:
        raise UpstreamLayoutChanged(f"{LOADING}: no Qwen3ForCausalLM config branch")
    nxt = tail.index("\n    elif architecture == ") + 1
    text = head + sep + tail[:nxt] + config_branch(src) + tail[nxt:]
    dense = ('        elif cfg.original_architecture == "Qwen3ForCausalLM":\n'
             "            state_dict = convert_qwen3_weights(hf_model, cfg)\n")
    text = _replace(text, dense, dense +
                    f'        elif cfg.original_architecture == "{ARCHITECTURE}":\n'
                    "            state_dict = convert_qwen3_moe_weights(hf_model, cfg)\n", LOADING)
    return {LOADING: text}


def edit_fold_ln(root: Path) -> dict[str, str]:
    # get_pretrained_model_config has already made the norms weightless (RMSPre) when fold_ln is
    # set, so skipping the fold for MoE drops the gains. ProcessWeights.fold_layer_norm folds ln2
    # into the router and every expert of a block with these parameter names: let it.
    old = ("            if self.cfg.num_experts and self.cfg.num_experts > 1:\n"
           "                logging.warning(\n"
           '                    "You are using MoE, so the layer norm weights can\'t be folded!')
    new = ("            if (\n"
           "                self.cfg.num_experts\n"
           "                and self.cfg.num_experts > 1\n"
           "                # ProcessWeights.fold_layer_norm folds ln2 into Qwen3MoE's router "
           "and\n"
           "                # experts (and get_pretrained_model_config has made the norms "
           "RMSPre).\n"
           f'                and self.cfg.original_architecture != "{ARCHITECTURE}"\n'
           "            ):\n"
           "                logging.warning(\n"
           '                    "You are using MoE, so the layer norm weights can\'t be folded!')
    return {HOOKED: _replace((root / HOOKED).read_text(), old, new, HOOKED)}


def edits(root: Path) -> dict[str, str]:
    """Every file this patch changes except ``supported_models.py`` (the names)."""
    src = _Source()
    return {**edit_moe_component(root, src), **edit_conversion(root, src),
            **edit_loading(root, src), **edit_fold_ln(root)}

