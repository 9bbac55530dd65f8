"""The extension point: a third-party plugin adds a model that then loads, whether it arrives
through the ``qwen_interp`` entry-point group or is registered at run time. Also: every hook in
hookspecs.py has a test named ``test_hook_<name>`` (datasette's rule)."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import run_python
from qwen_interp import hookimpl, hookspecs
from qwen_interp.specs import ModelSpec

TINY = ModelSpec("acme/Qwen3-Tiny-Base", "Qwen3ForCausalLM", d_model=256, n_layers=4,
                 n_heads=4, n_kv_heads=2, d_head=64, d_mlp=768, tied_embeddings=True,
                 aliases=("acme-tiny",))

PLUGIN_SOURCE = '''
from qwen_interp import hookimpl
from qwen_interp.specs import ModelSpec

@hookimpl
def register_models(register):
    register(ModelSpec("acme/Qwen3-Tiny-Base", "Qwen3ForCausalLM", d_model=256, n_layers=4,
                       n_heads=4, n_kv_heads=2, d_head=64, d_mlp=768, tied_embeddings=True,
                       aliases=("acme-tiny",)))
'''


def install_fake_distribution(root: Path) -> None:
    """A minimal installed distribution with a ``qwen_interp`` entry point, found via sys.path."""
    (root / "acme_qwen.py").write_text(PLUGIN_SOURCE)
    dist = root / "acme_qwen-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-qwen\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[qwen_interp]\nacme = acme_qwen\n")


@pytest.mark.slow
@pytest.mark.subprocess
def test_hook_register_models_entry_point_plugin_model_loads(tmp_path, qwen_offline_hub):
    qwen_offline_hub.model(TINY)
    install_fake_distribution(tmp_path)
    code = textwrap.dedent("""
        import json, qwen_interp, torch
        from transformer_lens import HookedTransformer
        model = HookedTransformer.from_pretrained_no_processing("acme-tiny", device="cpu")
        print(json.dumps([qwen_interp.activation.state().plugin_names, model.cfg.n_layers,
                          qwen_interp.registry().owners["models"]["acme/Qwen3-Tiny-Base"]]))
    """)
    out = run_python(code, env={"PYTHONPATH": str(tmp_path)})
    names, n_layers, owner = json.loads(out.stdout.strip().splitlines()[-1])
    assert "acme" in names and owner == "acme"
    assert n_layers == 3  # the small stand-in the offline hub built

    # The same code without the plugin fails the way upstream does.
    out = run_python(code, env={"PYTHONPATH": str(tmp_path),
                                "QWEN_INTERP_PLUGINS": "qwen3,transformerlens"},
                     check=False)
    assert out.returncode != 0 and "acme-tiny not found" in out.stderr


def test_runtime_plugin_model_loads_and_unregisters(qwen_offline_hub):
    import qwen_interp
    from transformer_lens import HookedTransformer
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES
    from transformers import AutoModelForCausalLM

    class Acme:
        @hookimpl
        def register_models(register):
            register(TINY)

    qwen_offline_hub.model(TINY)
    qwen_interp.register_plugin(Acme, name="acme-runtime")
    try:
        tl = HookedTransformer.from_pretrained_no_processing("acme/Qwen3-Tiny-Base", device="cpu")
        hf = AutoModelForCausalLM.from_pretrained("acme/Qwen3-Tiny-Base", dtype=torch.float32)
        ids = torch.tensor([[151643, 17417, 25, 576]])
        with torch.no_grad():
            assert (tl(ids) - hf(ids).logits).abs().max().item() <= 1e-4
    finally:
        qwen_interp.unregister_plugin(Acme)
    assert "acme/Qwen3-Tiny-Base" not in OFFICIAL_MODEL_NAMES
    with pytest.raises(ValueError, match="not found"):
        HookedTransformer.from_pretrained_no_processing("acme/Qwen3-Tiny-Base", device="cpu")


def test_every_hook_has_a_test():
    """datasette's rule: each hookspec has a test whose name starts with test_hook_<name>."""
    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if name.startswith("register_")]
    assert hooks, "no hookspecs found"
    test_names = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        test_names.update(line.split("def ", 1)[1].split("(", 1)[0]
                          for line in path.read_text().splitlines()
                          if line.startswith("def test_hook_"))
    missing = [h for h in hooks if not any(t.startswith(f"test_hook_{h}") for t in test_names)]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"
