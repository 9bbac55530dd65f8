"""Exact restore across the three upstreams of the main profile (TransformerLens, circuit-tracer,
SAELens): every object the adapters patched is the same object again after ``deactivate()``.
Main profile only (the Qwen3.5 profile has no circuit-tracer); the PatchSet mechanics are tested
in ``test_patching.py``, which both profiles run."""

from __future__ import annotations

import json

import pytest

from helpers import run_python


RESTORE = """
import importlib, json, pkgutil, sys
UPSTREAMS = ("transformer_lens", "circuit_tracer", "sae_lens")
for top in UPSTREAMS:  # every module, so that every patch is applied at import qwen_interp
    for info in pkgutil.walk_packages(importlib.import_module(top).__path__, top + "."):
        try:
            importlib.import_module(info.name)
        except Exception:
            pass  # optional extras (servers, training) that need packages not installed

def owners():
    found = {}
    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] in UPSTREAMS:
            found[name] = mod
            for value in list(vars(mod).values()):
                if isinstance(value, type) and value.__module__ == name:
                    found[f"{name}:{value.__qualname__}"] = value
    return found

def containers():  # module-level tables adapters add to in place (and SAELens's directory)
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    found = {"sae_lens directory": get_pretrained_saes_directory()}
    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] in UPSTREAMS:
            for attr, value in list(vars(mod).items()):
                if type(value) in (dict, list):
                    found[f"{name}.{attr}"] = value
    return found

def snapshot():  # namespaces and tables, their entries compared by identity
    return ({key: dict(vars(obj)) for key, obj in objects.items()},
            {key: dict(enumerate(t)) if type(t) is list else dict(t) for key, t in tables.items()})

def changed(before):
    names, contents = before
    now = {key: dict(enumerate(t)) if type(t) is list else t for key, t in tables.items()}
    return sorted([f"{key}.{attr}" for key, obj in objects.items()
                   for attr in set(names[key]) | set(vars(obj))
                   if names[key].get(attr, "<absent>") is not vars(obj).get(attr, "<absent>")] +
                  [f"{key}[{item!r}]" for key in tables
                   for item in set(contents[key]) | set(now[key])
                   if contents[key].get(item, "<absent>") is not now[key].get(item, "<absent>")])

from circuit_tracer import ReplacementModel
class Sub(ReplacementModel):
    @classmethod
    def from_pretrained_and_transcoders(cls, model_name, transcoders, **kwargs):
        return cls  # what upstream's from_pretrained passes on as cls

def cls_seen():
    return Sub.from_pretrained(MODEL, RELEASE, device="cpu").__name__

objects, tables = owners(), containers()
pristine = snapshot()
classmethod_before = vars(ReplacementModel)["from_pretrained"]
import qwen_interp
from qwen_interp.patching import PatchSet
def patch_sets(adapter):  # a PatchSet attribute, or one per part (AdapterBase)
    for value in vars(adapter).values():
        for ps in value.values() if isinstance(value, dict) else [value]:
            if isinstance(ps, PatchSet):
                yield ps

patched = sorted({f"{getattr(o, '__qualname__', getattr(o, '__name__', ''))}.{n}"
                  for adapter in qwen_interp.registry().adapters.values()
                  for ps in patch_sets(adapter) for o, n in ps.targets()})
active = dict(changed=changed(pristine), cls=cls_seen(),
              kind=type(vars(ReplacementModel)["from_pretrained"]).__name__)
qwen_interp.deactivate()
print(json.dumps(dict(patched=patched, active=active, after=changed(pristine), cls=cls_seen(),
                      same=vars(ReplacementModel)["from_pretrained"] is classmethod_before)))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_deactivate_restores_every_patched_upstream_object_exactly(qwen_offline_hub,
                                                                    qwen_registry):
    """Objects are taken before ``import qwen_interp``, in a fresh interpreter with every module
    of TransformerLens, circuit-tracer and SAELens imported (so every adapter patches at once),
    and compared by identity after ``deactivate()``: every module and class namespace."""
    model, release = "Qwen/Qwen3-0.6B-Base", "bluelightai/clt-qwen3-0.6b-base-20k"
    qwen_offline_hub.transcoder(qwen_registry.transcoder_release(release),
                                qwen_registry.model(model))
    out = run_python(f"MODEL, RELEASE = {model!r}, {release!r}\n" + RESTORE)
    s = json.loads(out.stdout.strip().splitlines()[-1])
    # What the adapters patched (each class attribute of TL, circuit-tracer; SAELens uses dicts).
    for attr in ("ReplacementModel.from_pretrained", "HookedTransformer.from_pretrained",
                 "TransformerBlock.forward", "TransformerLensReplacementModel.get_activations",
                 "CrossLayerTranscoder.compute_attribution_components"):
        assert attr in s["patched"]
        assert any(c.endswith(f":{attr}") for c in s["active"]["changed"]), attr
    for table in ("sae_lens.loading.pretrained_sae_loaders.NAMED_PRETRAINED_SAE_LOADERS"
                  "['qwen_scope']", "transformer_lens.supported_models.MODEL_ALIASES"
                  "['Qwen/Qwen3-8B-Base']"):
        assert table in s["active"]["changed"]
    assert s["active"]["kind"] == "classmethod" and s["active"]["cls"] == "Sub"
    assert s["after"] == []  # every module and class namespace holds the same objects again
    assert s["same"] and s["cls"] == "Sub"
