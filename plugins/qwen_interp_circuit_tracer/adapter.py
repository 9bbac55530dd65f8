"""The circuit-tracer adapter: activated when ``circuit_tracer`` is imported.

What it changes (all through a PatchSet; ``deactivate()`` restores upstream exactly):

1. ``load_transcoder_from_hub`` in ``circuit_tracer.utils.hf_utils`` and in every module that
   imported it by name (``replacement_model``, ``replacement_model_transformerlens``,
   ``replacement_model_nnsight``; patched when each is imported). The wrapper handles registered
   releases (repo id or alias, optional ``@revision``) and local folders, in any registered
   format, with validation first; any other reference, or a release already in circuit-tracer's
   own cache (``save_transcoders_to_cache``), goes to upstream unchanged.
   ``ReplacementModel.from_pretrained`` refuses a registered CLT paired with another registered
   model, and an unknown model name or dtype, before loading anything (string dtypes such as
   "bfloat16" are converted); while it loads the CLT (``qwen_interp.fit.paired_with``), the
   CLT's width and ``config.yaml`` hook names are checked against that model before any weight
   is read.
   ``TransformerLensReplacementModel.__del__`` no longer prints an ignored TypeError at
   interpreter exit.
2. nnsight hook points for Qwen3: circuit-tracer maps only ``mlp.hook_in``/``mlp.hook_out``; the
   adapter adds the missing ``hook_resid_mid`` and ``hook_mlp_out`` (never overriding an
   upstream entry).
3. First position (Qwen has no BOS). Decision: keep circuit-tracer's convention that position 0
   is a special token whose features and error are zeroed, and use Qwen's ``<|endoftext|>``
   (id 151643, the document separator Qwen saw in pretraining, and the token ``attribute()``'s
   ``ensure_tokenized`` already prepends) as that token. Upstream prepends it only in
   ``attribute()``; ``get_activations``/``feature_intervention``/``feature_intervention_generate``
   tokenize strings without it, so their position 0 would be the first real token with its
   features silently zeroed, and positions would not match the graph's. For Qwen models the
   adapter prefixes ``<|endoftext|>`` to *string* inputs of those methods (unless the string
   already starts with a special token), so positions in every API equal positions in
   ``graph.input_tokens``. Token-id inputs are passed through unchanged (caller's choice).
4. Prompts (Qwen models): ``attribute()`` (through ``ensure_tokenized``), ``get_activations``,
   ``feature_intervention`` and ``feature_intervention_generate`` refuse bytes, lone surrogates,
   empty prompts and (TransformerLens backend) more tokens than n_ctx with one InputError
   before the model runs.

Each change is one :class:`~qwen_interp.adapters.Part` (:meth:`CircuitTracerAdapter.parts`);
``status()`` is one :class:`~qwen_interp.adapters.PartStatus` per part. Parts circuit-tracer
already has (qwen-interp's upstream patches, detected by ``upstream_parts``) are not applied
again and stand down with state ``upstream``: native formats and top-k CLTs are then converted
and loaded by circuit-tracer's own modules (the registry, aliases and local folders stay here),
and a method that already tokenizes strings is left unwrapped. A part with nothing to change
(no nnsight mapping for an architecture, no ``__del__`` of its own) is ``inactive``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import sys
from pathlib import Path

from qwen_interp.adapters import AdapterBase, AlreadyUpstream, NothingToChange, Part
from qwen_interp.fit import Pairing, current_pairing, paired_with, pairing_mismatch
from qwen_interp.patching import PatchSet

from . import upstream_parts

HF_UTILS = "circuit_tracer.utils.hf_utils"
FACTORY = "circuit_tracer.replacement_model.replacement_model"
IMPORTERS = (FACTORY,
             "circuit_tracer.replacement_model.replacement_model_transformerlens",
             "circuit_tracer.replacement_model.replacement_model_nnsight")
MAPPING = "circuit_tracer.utils.tl_nnsight_mapping"
BACKENDS = {"circuit_tracer.replacement_model.replacement_model_transformerlens":
            "TransformerLensReplacementModel",
            "circuit_tracer.replacement_model.replacement_model_nnsight": "NNSightReplacementModel"}
STRING_INPUT_METHODS = ("get_activations", "feature_intervention", "feature_intervention_generate")

# circuit-tracer's feature hook names (inside a block) that its nnsight backend must resolve.
FEATURE_HOOKS = ("mlp.hook_in", "mlp.hook_out", "hook_resid_mid", "hook_mlp_out")


def nnsight_feature_hooks(hook_map) -> dict[str, tuple[str, str]]:
    """circuit-tracer's ``feature_hook_mapping`` entries, from the architecture's one hook-name
    map (the same map every plugin uses)."""
    out = {}
    for point in hook_map.points.values():
        if point.nnsight is None:
            continue
        for tl in (point.tl, *point.tl_aliases):
            name = tl.removeprefix("blocks.{layer}.")
            if name in FEATURE_HOOKS:
                out[name] = (point.nnsight, point.nnsight_port or point.hf_port)
    return out


def release_for_folder(folder: Path, registry):
    """A registered release whose Hub cache folder contains ``folder`` (models--org--name)."""
    for rel in registry.transcoder_releases.values():
        marker = "models--" + rel.repo_id.replace("/", "--")
        if marker in folder.resolve().parts:
            return rel
    return None


def make_loader(original):
    """The wrapper around upstream ``load_transcoder_from_hub``. It reads the registry at call
    time, so a reference imported before a plugin was registered still sees the plugin."""

    @functools.wraps(original)
    def load_transcoder_from_hub(hf_ref, device=None, dtype=None, lazy_encoder=False,
                                 lazy_decoder=True, cache_dir=None, use_cache=True):
        import torch

        import qwen_interp
        from .formats import load_folder
        registry = qwen_interp.registry()
        dtype = torch.float32 if dtype is None else dtype
        upstream = functools.partial(original, device=device, dtype=dtype,
                                     lazy_encoder=lazy_encoder, lazy_decoder=lazy_decoder,
                                     cache_dir=cache_dir, use_cache=use_cache)
        kwargs = dict(device=device, dtype=dtype, lazy_encoder=lazy_encoder,
                      lazy_decoder=lazy_decoder)
        pairing = current_pairing()
        if pairing is not None:  # validate against the model it is loaded for
            kwargs["model_name"] = pairing.model_name
        ref = str(hf_ref)
        local = Path(ref).expanduser()
        if local.is_dir():
            release = release_for_folder(local, registry)
            check_config_hooks(local, release, pairing, registry)
            return load_folder(local, registry, release=release, **kwargs)
        name, _, revision = ref.partition("@")
        try:
            release = registry.transcoder_release(name)
        except KeyError:
            return upstream(hf_ref)  # not ours: upstream unchanged
        from circuit_tracer.utils.caching import is_cached
        if use_cache and is_cached(release.repo_id, cache_dir):
            return upstream(release.repo_id)  # upstream's own cache already holds it
        from huggingface_hub import snapshot_download
        folder = snapshot_download(release.repo_id, revision=revision or None,
                                   allow_patterns=["*.safetensors", "*.yaml", "*.json"],
                                   ignore_patterns=["features/*"])
        check_config_hooks(Path(folder), release, pairing, registry)
        clt, config = load_folder(Path(folder), registry, release=release,
                                  scan=release.repo_id, **kwargs)
        config.update(repo_id=release.repo_id, revision=revision or None, subfolder=None)
        return clt, config

    load_transcoder_from_hub.__qwen_interp_original__ = original
    return load_transcoder_from_hub


def check_config_hooks(folder: Path, release, pairing: Pairing | None, registry) -> None:
    """The hooks a ``config.yaml`` names must be hook points of the model's blocks (on the
    backend that will run it), checked before any weight is read. The model is the paired one,
    else the config's ``model_name``, else the release's; with none known, nothing is checked."""
    import yaml

    from .validate import check_hook_names
    path = folder / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return  # the format's loader reports an unreadable config.yaml
    if not isinstance(cfg, dict):
        return
    hooks = {key: cfg[key] for key in ("feature_input_hook", "feature_output_hook") if key in cfg}
    model = (pairing and pairing.model_name) or cfg.get("model_name") or (
        release and release.model_repo_id)
    if not hooks or not model:
        return
    backend = pairing.backend if pairing else None
    valid = block_hook_names(str(model), backend, registry)
    if valid is not None:
        check_hook_names(path, hooks, valid, f"{model} ({backend or 'any'} backend)")


def block_hook_names(model_name: str, backend: str | None, registry) -> frozenset[str] | None:
    """Hook names inside one block that circuit-tracer can attach a transcoder to, for
    ``backend`` ("transformerlens", "nnsight", or None for either); None if not derivable."""
    names: set[str] = set()
    if backend in (None, "transformerlens"):
        tl = _tl_block_hook_names(model_name)
        if tl is None:  # e.g. offline without the model's config: cannot judge
            return None
        names |= tl
    if backend in (None, "nnsight"):
        arch = _architecture(model_name, registry)
        try:
            from circuit_tracer.utils.tl_nnsight_mapping import get_mapping
            names |= set(get_mapping(arch).feature_hook_mapping) if arch else set()
        except Exception:  # noqa: BLE001 - no mapping for this architecture: upstream says so
            if backend is not None:
                return None
    return frozenset(names) or None


@functools.lru_cache(maxsize=32)
def _tl_block_hook_names(model_name: str) -> frozenset[str] | None:
    """HookedTransformer's hook points in one block of ``model_name``, from its config alone
    (one block built on the meta device: no memory), with circuit-tracer's MLP wrapper
    (``mlp.hook_in``/``mlp.hook_out`` around ``mlp.old_mlp``) applied."""
    import torch
    try:
        from transformer_lens import loading_from_pretrained as loading
        from transformer_lens.components import TransformerBlock
        from transformer_lens.hook_points import HookPoint
        cfg = loading.get_pretrained_model_config(model_name)
        with torch.device("meta"):
            block = TransformerBlock(cfg, 0)
    except Exception:  # noqa: BLE001 - not derivable here: TransformerLens reports it later
        return None
    names = {n for n, m in block.named_modules() if isinstance(m, HookPoint)}
    names = {"mlp.old_mlp." + n[4:] if n.startswith("mlp.") else n for n in names}
    return frozenset(names | {"mlp.hook_in", "mlp.hook_out"})


def _architecture(model_name: str, registry) -> str | None:
    try:
        return registry.model(model_name).architecture
    except KeyError:
        pass
    config = _hf_config(model_name)
    return (config.get("architectures") or [None])[0] if config else None


def _hf_config(model_name: str) -> dict | None:
    """``config.json`` of a local checkpoint folder or a Hub repo (cache or download); None
    if there is none."""
    import json
    local = Path(model_name).expanduser() / "config.json"
    try:
        if local.is_file():
            return json.loads(local.read_text())
        from huggingface_hub import hf_hub_download
        return json.loads(Path(hf_hub_download(model_name, "config.json")).read_text())
    except Exception:  # noqa: BLE001 - missing, offline and uncached, or not a repo id
        return None


def check_model_name(model_name, backend: str = "transformerlens") -> None:
    """The model must exist for ``backend`` before anything is loaded (a typo would otherwise
    be reported only after the whole CLT was read): a local checkpoint folder, a name
    TransformerLens knows (its backend), or a Hub repo with a ``config.json`` (nnsight)."""
    import qwen_interp
    from qwen_interp.errors import InputError
    name = str(model_name)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise InputError(f"model {name!r}: a folder without config.json, not a checkpoint")
        return
    if backend == "transformerlens":
        from transformer_lens import loading_from_pretrained as loading
        try:
            loading.get_official_model_name(name)
            return
        except ValueError:
            known = [*loading.OFFICIAL_MODEL_NAMES,
                     *(a for names in loading.MODEL_ALIASES.values() for a in names)]
        where = "is not a model TransformerLens knows nor a local checkpoint folder"
    else:
        if _hf_config(name) is not None:
            return
        known = [s.repo_id for s in qwen_interp.registry().models.values()]
        where = ("has no config.json: not a local checkpoint folder nor a Hub repo (with "
                 "HF_HUB_OFFLINE=1: not in the local cache)")
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise InputError(f"model {name!r} {where}{hint} Nothing was loaded.")


def preflight(model_name, transcoder_set, backend: str = "transformerlens") -> None:
    """Every check that needs neither the CLT's weights nor the model's: the model exists, and a
    registered CLT is paired with its own model."""
    from qwen_interp.errors import InputError
    check_pairing(model_name, transcoder_set)
    try:
        check_model_name(model_name, backend)
    except InputError as exc:
        import qwen_interp
        try:
            release = qwen_interp.registry().transcoder_release(
                str(transcoder_set).partition("@")[0])
        except KeyError:
            raise exc from None
        raise InputError(f"{exc} (the CLT {release.repo_id} was trained on "
                         f"{release.model_repo_id})") from None


def check_pairing(model_name, transcoder_set) -> None:
    """Refuse a registered CLT paired with another registered model (before loading either)."""
    import qwen_interp
    from .errors import TranscoderValidationError
    mismatch = pairing_mismatch(qwen_interp.registry(), model_name, transcoder_set)
    if mismatch is not None:
        raise TranscoderValidationError(mismatch.transcoder, None, mismatch.problem)


def with_model_check(from_pretrained):
    """Wrap ``ReplacementModel.from_pretrained`` so that a registered CLT paired with another
    registered model, an unknown model name or an unknown dtype fails at once, before either is
    loaded (not later with a shape error); string dtypes are converted, and the CLT is loaded
    paired with the model (its width and hook names are checked against it)."""

    signature = inspect.signature(from_pretrained)

    @functools.wraps(from_pretrained)
    def wrapper(cls, model_name, transcoder_set, *args, **kwargs):
        from qwen_interp.inputs import torch_dtype
        bound = signature.bind(cls, model_name, transcoder_set, *args, **kwargs)
        if "dtype" in bound.arguments:  # "bfloat16" would fail only after the CLT was read
            bound.arguments["dtype"] = torch_dtype(bound.arguments["dtype"])
        backend = bound.arguments.get("backend", "transformerlens")
        preflight(model_name, transcoder_set, backend)
        with paired_with(model_name, backend):
            return from_pretrained(*bound.args, **bound.kwargs)

    return classmethod(wrapper)


def quiet_at_exit(original_del):
    """``TransformerLensReplacementModel.__del__`` resets hooks; at interpreter exit torch's
    module globals are already gone and it prints an ignored TypeError. Skip it only then."""

    @functools.wraps(original_del)
    def __del__(self):
        if sys.is_finalizing():
            return
        original_del(self)

    return __del__


def nnsight_mappings(module) -> dict:
    """circuit-tracer's nnsight mappings by architecture. The PyPI build keeps them in a
    ``_REGISTRY`` dict; upstream's main defines one module-level mapping object per architecture
    (e.g. ``qwen_3_mapping``) and builds its lookup table inside ``get_mapping``."""
    registry = getattr(module, "_REGISTRY", None)
    if isinstance(registry, dict):
        return dict(registry)
    return {obj.model_architecture: obj for obj in vars(module).values()
            if isinstance(getattr(obj, "model_architecture", None), str)
            and isinstance(getattr(obj, "feature_hook_mapping", None), dict)}


def with_first_position(method, architectures):
    """Wrap a replacement-model method so Qwen string inputs start with <|endoftext|>."""

    @functools.wraps(method)
    def first_position_wrapper(self, inputs, *args, **kwargs):
        arch = getattr(self.cfg, "original_architecture", None)
        if isinstance(inputs, str) and arch in architectures:
            inputs = first_position_prefix(self.tokenizer, inputs)
        return method(self, inputs, *args, **kwargs)

    return first_position_wrapper


def with_prompt_check(method, architectures):
    """Wrap ``ensure_tokenized`` (what ``attribute()`` tokenizes with) or a string-input method
    so that, for Qwen models, bytes, lone surrogates, empty prompts and (TransformerLens
    backend) sequences longer than n_ctx are one clear InputError before the model runs."""

    @functools.wraps(method)
    def prompt_check_wrapper(self, inputs, *args, **kwargs):
        if getattr(self.cfg, "original_architecture", None) not in architectures:
            return method(self, inputs, *args, **kwargs)
        from qwen_interp.inputs import check_length, check_prompt
        # ensure_tokenized is what attribute() tokenizes its prompt with
        what = "prompt" if method.__name__ == "ensure_tokenized" else f"{method.__name__} input"
        check_prompt(inputs, what)
        n_ctx = getattr(self.cfg, "n_ctx", None) if getattr(self, "backend", None) == \
            "transformerlens" else None
        if method.__name__ != "ensure_tokenized":
            if hasattr(inputs, "shape"):  # token ids; strings are checked by to_tokens
                check_length(inputs.shape[-1], n_ctx, what)
            return method(self, inputs, *args, **kwargs)
        tokens = method(self, inputs, *args, **kwargs)
        check_length(tokens.shape[-1], n_ctx, what)
        return tokens

    return prompt_check_wrapper


def first_position_prefix(tokenizer, text: str) -> str:
    """``text`` with the special token ``ensure_tokenized`` would prepend, as text, unless it
    already starts with a special token."""
    if any(text.startswith(tok) for tok in tokenizer.all_special_tokens):
        return text
    candidates = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id,
                  *tokenizer.all_special_ids]
    token_id = next(filter(None, candidates), None)
    if token_id is None:
        return text
    return tokenizer.convert_ids_to_tokens(token_id) + text


def _short(modname: str) -> str:
    return modname.rpartition(".")[2]


def qwen_architectures(registry) -> set[str]:
    """The architectures of the registered models: the ones the wrappers act on."""
    return {spec.architecture for spec in registry.models.values()}


class CircuitTracerAdapter(AdapterBase):
    name = "circuit_tracer"
    module = "circuit_tracer"

    def __init__(self) -> None:
        super().__init__()
        # (upstream's load_transcoder_from_hub, our wrapper) once hf_utils is patched: every
        # module that imported the loader by name gets the same wrapper.
        self._loader: tuple[object, object] | None = None

    def parts(self) -> list[Part]:
        parts = [
            Part("transcoder-loader", HF_UTILS,
                 "load_transcoder_from_hub: registered CLT releases, aliases, local folders, "
                 "registered formats, validation before loading", self._patch_loader),
            Part("native-formats", HF_UTILS,
                 "BluelightAI native formats converted by the plugin",
                 functools.partial(self._format_part, upstream_parts.NATIVE_MODULE)),
            Part("topk-clts", HF_UTILS, "top-k CLTs provided by the plugin",
                 functools.partial(self._format_part, upstream_parts.TOPK_MODULE)),
        ]
        for modname in IMPORTERS:
            parts.append(Part(f"transcoder-loader:{_short(modname)}", modname,
                              "its load_transcoder_from_hub (imported by name): the wrapper",
                              functools.partial(self._patch_importer, modname)))
            if modname == FACTORY:
                parts.append(Part("model-check", FACTORY,
                                  "ReplacementModel.from_pretrained: model name, dtype and a "
                                  "registered CLT's pairing checked before loading; the CLT is "
                                  "loaded paired with the model", self._patch_model_check))
            cls_name = BACKENDS.get(modname)
            if cls_name:  # prompt checks wrap the first-position wrapper: applied after it
                parts += [
                    Part(f"first-position:{cls_name}", modname,
                         f"{cls_name}.{{{','.join(STRING_INPUT_METHODS)}}}: <|endoftext|> first "
                         "for Qwen string inputs",
                         functools.partial(self._patch_first_position, modname)),
                    Part(f"prompt-checks:{cls_name}", modname,
                         f"{cls_name}: Qwen prompts checked (bytes, surrogates, empty, n_ctx)",
                         functools.partial(self._patch_prompt_checks, modname)),
                    Part(f"quiet-del:{cls_name}", modname,
                         f"{cls_name}.__del__: silent at interpreter exit",
                         functools.partial(self._patch_quiet_del, modname))]
        for arch, hook_map in self.registry.hook_name_maps.items():
            if nnsight_feature_hooks(hook_map):
                parts.append(Part(f"nnsight-mapping:{arch}", MAPPING,
                                  f"circuit-tracer's {arch} nnsight mapping: the feature hooks "
                                  "it lacks", functools.partial(self._patch_nnsight_mapping, arch)))
        return parts

    # --- the parts -----------------------------------------------------------------------------
    def _patch_loader(self, patches: PatchSet, registry) -> str:
        hf_utils = importlib.import_module(HF_UTILS)

        def make(current):
            original = getattr(current, "__qwen_interp_original__", current)
            self._loader = (original, make_loader(original))
            return self._loader[1]

        patches.wrap(hf_utils, "load_transcoder_from_hub", make)
        return ""

    @staticmethod
    def _format_part(upstream_name: str, patches: PatchSet, registry) -> str:
        if upstream_parts.upstream_module(upstream_name) is not None:
            raise AlreadyUpstream(f"{upstream_name}; the plugin delegates to it")
        return "provided by the plugin"

    def _patch_importer(self, modname: str, patches: PatchSet, registry) -> str:
        mod = importlib.import_module(modname)  # imports hf_utils first: the loader is patched
        if self._loader is None:
            raise RuntimeError("the transcoder-loader part is not applied")
        original, wrapper = self._loader
        if mod.load_transcoder_from_hub is wrapper:
            # Imported while hf_utils was patched: undo must leave upstream's original here.
            patches.setattr(mod, "load_transcoder_from_hub", wrapper, restore=original)
        else:
            patches.setattr(mod, "load_transcoder_from_hub", wrapper)
        return ""

    @staticmethod
    def _patch_model_check(patches: PatchSet, registry) -> str:
        factory = importlib.import_module(FACTORY).ReplacementModel
        # A classmethod: wrap its function and install a classmethod (getattr would bind it).
        patches.setattr(factory, "from_pretrained", with_model_check(
            factory.__dict__["from_pretrained"].__func__))
        return ""

    def _patch_first_position(self, modname: str, patches: PatchSet, registry) -> str:
        cls = getattr(importlib.import_module(modname), BACKENDS[modname])
        archs = qwen_architectures(registry)
        methods = [m for m in STRING_INPUT_METHODS if m in cls.__dict__]
        done = [m for m in methods if upstream_parts.tokenizes_strings(cls.__dict__[m])]
        todo = [m for m in methods if m not in done]
        if not methods:
            raise NothingToChange("no string-input methods")
        if not todo:  # upstream already tokenizes strings in every one: leave them
            raise AlreadyUpstream(f"string inputs already tokenized in {done}")
        for meth in todo:
            patches.wrap(cls, meth, lambda method: with_first_position(method, archs))
        return f"wrapped {todo}" + (f"; already upstream in {done}" if done else "")

    @staticmethod
    def _patch_prompt_checks(modname: str, patches: PatchSet, registry) -> str:
        cls = getattr(importlib.import_module(modname), BACKENDS[modname])
        archs = qwen_architectures(registry)
        wrapped = [m for m in ("ensure_tokenized", *STRING_INPUT_METHODS) if m in cls.__dict__]
        for meth in wrapped:  # wraps the first-position wrapper: checked before it
            patches.wrap(cls, meth, lambda method: with_prompt_check(method, archs))
        return f"wrapped {wrapped}"

    def _patch_quiet_del(self, modname: str, patches: PatchSet, registry) -> str:
        cls = getattr(importlib.import_module(modname), BACKENDS[modname])
        if "__del__" not in cls.__dict__:
            raise NothingToChange("no __del__ of its own")
        patches.wrap(cls, "__del__", quiet_at_exit)
        return ""

    def _patch_nnsight_mapping(self, arch: str, patches: PatchSet, registry) -> str:
        hooks = nnsight_feature_hooks(registry.hook_name_maps[arch])
        entry = nnsight_mappings(importlib.import_module(MAPPING)).get(arch)
        if entry is None:
            raise NothingToChange(f"circuit-tracer has no {arch} mapping; not added")
        added = [k for k in hooks if k not in entry.feature_hook_mapping]
        kept = sorted(set(hooks) - set(added))
        if not added:
            raise AlreadyUpstream(f"upstream already maps {kept}")
        for key in added:
            patches.setitem(entry.feature_hook_mapping, key, hooks[key])
        return f"added {added}; upstream already maps {kept}"

    # --- lifecycle -----------------------------------------------------------------------------
    def deactivate(self) -> None:
        try:
            super().deactivate()
        finally:
            self._loader = None
