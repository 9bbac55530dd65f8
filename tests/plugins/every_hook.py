"""A test plugin that implements every hook in ``qwen_interp.hookspecs``, one record each.

``tests/test_hook_docs.py`` checks that it implements them all; ``tests/test_hook_api.py``
registers it (at run time, and installed through the ``qwen_interp`` entry-point group) and
finds each record in the registry, the command line and ``qwen-interp doctor``. Every name
starts with ``every-hook`` / ``every_hook`` / ``EveryHook``, so nothing clashes with a real
plugin.
"""

from __future__ import annotations

from pathlib import Path

from qwen_interp import hookimpl
from qwen_interp.adapters import AdapterBase, Part
from qwen_interp.specs import (Command, DoctorCheck, HookNameMap, HookPoint, ModelFamily,
                               ModelSpec, SAERelease, TranscoderFormat, TranscoderRelease)
from qwen_interp.upstream_patches import Patch, UpstreamProject

ARCHITECTURE = "EveryHookForCausalLM"
MODEL = "every-hook/Qwen3-Tiny-Base"
COMMAND_OUTPUT = "every-hook command ran"
DOCTOR_PROBLEM = "every_hook: the test plugin's doctor check reports this line on purpose"
ADAPTER_MODULE = "textwrap"  # any module that imports: the adapter marks it and undoes that
MARK = "EVERY_HOOK_WAS_HERE"


def _hooks(architecture: str) -> HookNameMap:
    return HookNameMap(architecture, {
        "resid_post": HookPoint(tl="blocks.{layer}.hook_resid_post",
                                hf_module="model.layers.{layer}", hf_port="output",
                                bridge="blocks.{layer}.hook_out"),
    })


FAMILY = ModelFamily(ARCHITECTURE, hf_config_class="Qwen3Config", hook_names=_hooks(ARCHITECTURE))


@hookimpl
def register_models(register):
    register(ModelSpec(MODEL, ARCHITECTURE, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                       d_head=32, d_mlp=128, tied_embeddings=True, aliases=("every-hook-tiny",)))


@hookimpl
def register_model_families(register):
    register(FAMILY)


@hookimpl
def register_transcoder_releases(register):
    register(TranscoderRelease("every-hook/clt-tiny", MODEL, n_layers=2, d_latent=16,
                               feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                               aliases=("every-hook-clt",)))


def _load_transcoder(path, **kwargs):
    raise NotImplementedError("the every_hook test format detects folders but loads none")


@hookimpl
def register_transcoder_formats(register):
    register(TranscoderFormat("every_hook", detect=lambda p: (Path(p) / "EVERY_HOOK").is_file(),
                              load=_load_transcoder))


@hookimpl
def register_sae_releases(register):
    register(SAERelease("every-hook-sae-tiny", "every-hook/SAE-Tiny", MODEL, d_model=64,
                        d_sae=128, k=8, n_layers=2))


class EveryHookAdapter(AdapterBase):
    name = "every_hook"
    module = ADAPTER_MODULE

    def parts(self) -> list[Part]:
        def mark(patches, registry) -> str:
            import textwrap
            patches.setattr(textwrap, MARK, True)
            return f"{ADAPTER_MODULE}.{MARK} set"
        return [Part("mark", ADAPTER_MODULE, f"sets {ADAPTER_MODULE}.{MARK}", mark)]


ADAPTER = EveryHookAdapter()


@hookimpl
def register_adapters(register):
    register(ADAPTER)


def _configure(parser) -> None:
    parser.add_argument("--shout", action="store_true")


def _run(args) -> int:
    print(COMMAND_OUTPUT.upper() if args.shout else COMMAND_OUTPUT)
    return 0


@hookimpl
def register_commands(register):
    register(Command("every-hook", "the every_hook test plugin's command", configure=_configure,
                     run=_run))


@hookimpl
def register_doctor_checks(register):
    register(DoctorCheck("every_hook-check", run=lambda: [DOCTOR_PROBLEM]))


@hookimpl
def register_upstream_patches(register):
    register(UpstreamProject("every-hook-upstream", package="every_hook_upstream", pinned="0.1",
                             patches=(Patch("nothing", "Change nothing", "A patch that changes "
                                            "no file.", apply=lambda root, registry: {}),)))
