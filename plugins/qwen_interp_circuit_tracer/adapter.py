"""The circuit-tracer adapter: activated when ``circuit_tracer`` is imported.

What it changes (all through a PatchSet; ``deactivate()`` restores upstream exactly):

1. ``load_transcoder_from_hub`` in ``circuit_tracer.utils.hf_utils`` and in every module that
   imported it by name (``replacement_model``, ``replacement_model_transformerlens``,
   ``replacement_model_nnsight``; patched when each is imported). The wrapper handles registered
   releases (repo id or alias, optional ``@revision``) and local folders, in any registered
   format, with validation first; any other reference, or a release already in circuit-tracer's
   own cache (``save_transcoders_to_cache``), goes to upstream unchanged.
   ``ReplacementModel.from_pretrained`` refuses a registered CLT paired with another registered
   model before loading anything. ``TransformerLensReplacementModel.__del__`` no longer prints an
   ignored TypeError at interpreter exit.
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

Parts circuit-tracer already has (qwen-interp's upstream patches, detected by ``upstream_parts``)
are not applied again, and ``status()`` says "already upstream": native formats and top-k CLTs
are then converted and loaded by circuit-tracer's own modules (the registry, aliases and local
folders stay here), and a method that already tokenizes strings is left unwrapped.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from qwen_interp import import_watch
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
        ref = str(hf_ref)
        local = Path(ref).expanduser()
        if local.is_dir():
            return load_folder(local, registry, release=release_for_folder(local, registry),
                               **kwargs)
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
        clt, config = load_folder(Path(folder), registry, release=release,
                                  scan=release.repo_id, **kwargs)
        config.update(repo_id=release.repo_id, revision=revision or None, subfolder=None)
        return clt, config

    load_transcoder_from_hub.__qwen_interp_original__ = original
    return load_transcoder_from_hub


def check_pairing(model_name, transcoder_set) -> None:
    """Refuse a registered CLT paired with another registered model (before loading either)."""
    import qwen_interp
    from .errors import TranscoderValidationError
    registry = qwen_interp.registry()
    try:
        release = registry.transcoder_release(str(transcoder_set).partition("@")[0])
        model = registry.model(str(model_name))
    except KeyError:
        return  # not both registered: nothing to compare
    if model.repo_id != release.model_repo_id:
        raise TranscoderValidationError(
            release.repo_id, None, f"this CLT was trained on {release.model_repo_id}, "
            f"not on {model.repo_id}; nothing was loaded")


def with_model_check(from_pretrained):
    """Wrap ``ReplacementModel.from_pretrained`` so that a registered CLT paired with another
    registered model fails at once, before either is loaded (not later with a shape error)."""

    @functools.wraps(from_pretrained)
    def wrapper(cls, model_name, transcoder_set, *args, **kwargs):
        check_pairing(model_name, transcoder_set)
        return from_pretrained(cls, model_name, transcoder_set, *args, **kwargs)

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


def with_first_position(method, architectures):
    """Wrap a replacement-model method so Qwen string inputs start with <|endoftext|>."""

    @functools.wraps(method)
    def wrapper(self, inputs, *args, **kwargs):
        if isinstance(inputs, str) and getattr(self.cfg, "original_architecture", None) in architectures:
            inputs = first_position_prefix(self.tokenizer, inputs)
        return method(self, inputs, *args, **kwargs)

    return wrapper


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


class CircuitTracerAdapter:
    name = "circuit_tracer"
    module = "circuit_tracer"

    def __init__(self) -> None:
        self._patches = PatchSet()
        self.active = False
        self.report: list[str] = []
        self._registry = None
        self._wrapper = None
        self._original = None

    def activate(self, registry) -> None:
        if self.active:
            return
        self.active = True
        self._registry = registry
        self.report = []
        # Each part patches its module when that module is imported (now, if it already is).
        import_watch.when_imported(HF_UTILS, self._guard(self._patch_hf_utils))
        for mod in IMPORTERS:
            import_watch.when_imported(mod, self._guard(functools.partial(self._patch_importer, mod)))
        import_watch.when_imported(MAPPING, self._guard(self._patch_nnsight_mapping))

    def _guard(self, fn):
        def run():
            if self.active:  # a late import after deactivate() must not patch
                fn()
        return run

    def _patch_hf_utils(self) -> None:
        import importlib
        hf_utils = importlib.import_module(HF_UTILS)
        current = hf_utils.load_transcoder_from_hub
        self._original = getattr(current, "__qwen_interp_original__", current)
        self._wrapper = make_loader(self._original)
        self._patches.setattr(hf_utils, "load_transcoder_from_hub", self._wrapper)
        self.report.append("load_transcoder_from_hub: registered CLT releases, aliases, local "
                           "folders, BluelightAI native formats, validation")
        self.report.extend(upstream_parts.status_lines())

    def _patch_importer(self, modname: str) -> None:
        import importlib
        mod = importlib.import_module(modname)  # imports hf_utils first, so _wrapper is set
        if self._wrapper is None:
            self._patch_hf_utils()
        if mod.load_transcoder_from_hub is self._wrapper:
            # Imported while hf_utils was patched: undo must leave upstream's original here.
            self._patches.setattr(mod, "load_transcoder_from_hub", self._wrapper,
                                  restore=self._original)
        else:
            self._patches.setattr(mod, "load_transcoder_from_hub", self._wrapper)
        if modname == FACTORY:
            factory = mod.ReplacementModel
            self._patches.setattr(factory, "from_pretrained", with_model_check(
                factory.__dict__["from_pretrained"].__func__))
            self.report.append("ReplacementModel.from_pretrained: a registered CLT must match "
                               "its model")
        cls_name = BACKENDS.get(modname)
        if cls_name:
            cls = getattr(mod, cls_name)
            self._patch_first_position(cls, cls_name)
            if "__del__" in cls.__dict__:
                self._patches.setattr(cls, "__del__", quiet_at_exit(cls.__dict__["__del__"]))

    def _patch_first_position(self, cls, cls_name: str) -> None:
        archs = {spec.architecture for spec in self._registry.models.values()}
        methods = [m for m in STRING_INPUT_METHODS if m in cls.__dict__]
        done = [m for m in methods if upstream_parts.tokenizes_strings(cls.__dict__[m])]
        for meth in methods:
            if meth not in done:  # upstream already tokenizes strings here: leave it
                self._patches.setattr(cls, meth, with_first_position(cls.__dict__[meth], archs))
        if done:
            self.report.append(f"{cls_name}: first position for string inputs already upstream "
                               f"in {done} (stood down)")
        if len(done) < len(methods):
            self.report.append(f"{cls_name}: <|endoftext|> first position for Qwen string inputs")

    def _patch_nnsight_mapping(self) -> None:
        import importlib
        mapping = importlib.import_module(MAPPING)
        for arch, hook_map in self._registry.hook_name_maps.items():
            hooks = nnsight_feature_hooks(hook_map)
            entry = mapping._REGISTRY.get(arch)
            if not hooks:
                continue
            if entry is None:
                self.report.append(f"nnsight: circuit-tracer has no {arch} mapping; not added")
                continue
            added = [k for k in hooks if k not in entry.feature_hook_mapping]
            for key in added:
                self._patches.setitem(entry.feature_hook_mapping, key, hooks[key])
            kept = sorted(set(hooks) - set(added))
            self.report.append(f"nnsight {arch}: added {added or 'nothing'}; upstream already "
                               f"maps {kept} (stood down)")

    def deactivate(self) -> None:
        self._patches.undo()
        self.active = False
        self.report = []
        self._wrapper = self._original = None

    def status(self) -> list[str]:
        return list(self.report) if self.active else ["not active (circuit_tracer not imported)"]
