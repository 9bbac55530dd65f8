"""The circuit-tracer adapter restores upstream exactly, whatever the import order, and the
conversion cache is built once, atomically, even by two processes at the same time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import run_python

SNAPSHOT = """
import circuit_tracer.utils.hf_utils as hf_utils
import circuit_tracer.replacement_model.replacement_model as rm
import circuit_tracer.replacement_model.replacement_model_transformerlens as rtl
import circuit_tracer.replacement_model.replacement_model_nnsight as rnn
import circuit_tracer.utils.tl_nnsight_mapping as mapping

def snapshot():
    out = {"hf_utils": id(hf_utils.load_transcoder_from_hub)}
    for name, mod in (("rm", rm), ("rtl", rtl), ("rnn", rnn)):
        out[name] = id(mod.load_transcoder_from_hub) == id(hf_utils.load_transcoder_from_hub)
    for cls in (rtl.TransformerLensReplacementModel, rnn.NNSightReplacementModel):
        out[cls.__name__] = {k: id(v) for k, v in cls.__dict__.items()}
    out["mapping"] = {a: dict(m.feature_hook_mapping) for a, m in mapping._REGISTRY.items()}
    return out
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("order", ["circuit_tracer_first", "qwen_interp_first"])
def test_deactivate_restores_upstream_exactly(order):
    code = textwrap.dedent(f"""
        import json
        order = {order!r}
        if order == "qwen_interp_first":
            import qwen_interp   # patches each circuit_tracer module as it is imported
        from circuit_tracer.utils.hf_utils import load_transcoder_from_hub as _probe
        """) + SNAPSHOT + textwrap.dedent("""
        if order == "circuit_tracer_first":
            pristine = snapshot()
            original = hf_utils.load_transcoder_from_hub
            import qwen_interp
        else:
            original = hf_utils.load_transcoder_from_hub.__qwen_interp_original__
        patched = snapshot()
        assert hf_utils.load_transcoder_from_hub is not original
        assert hf_utils.load_transcoder_from_hub.__qwen_interp_original__ is original
        assert all(patched[m] for m in ("rm", "rtl", "rnn")), patched
        assert "hook_mlp_out" in patched["mapping"]["Qwen3ForCausalLM"]
        qwen_interp.deactivate()
        after = snapshot()
        assert hf_utils.load_transcoder_from_hub is original
        for mod in (rm, rtl, rnn):
            assert mod.load_transcoder_from_hub is original, mod
        assert "hook_mlp_out" not in after["mapping"]["Qwen3ForCausalLM"]
        assert after["mapping"]["Qwen3ForCausalLM"] == {
            "mlp.hook_in": ("model.layers[{layer}].post_attention_layernorm", "output"),
            "mlp.hook_out": ("model.layers[{layer}].mlp", "output")}
        if order == "circuit_tracer_first":
            assert after == pristine
        print("OK")
        """)
    proc = run_python(code)
    assert proc.stdout.strip().endswith("OK")


@pytest.mark.subprocess
def test_adapter_reports_what_it_did():
    proc = run_python("""
        import dataclasses, json, qwen_interp
        import circuit_tracer.replacement_model.replacement_model_nnsight
        status = qwen_interp.registry().adapters["circuit_tracer"].status()
        print(json.dumps({s.part: dataclasses.asdict(s) for s in status}))
        """)
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    mapping = status["nnsight-mapping:Qwen3ForCausalLM"]
    assert mapping["state"] == "bridged", status
    assert mapping["detail"] == ("added ['hook_resid_mid', 'hook_mlp_out']; upstream already "
                                 "maps ['mlp.hook_in', 'mlp.hook_out']")
    assert status["first-position:NNSightReplacementModel"]["state"] == "bridged"


CONVERT = """
import json, sys, time, torch, qwen_interp
from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
while time.time() < float(sys.argv[2]):   # start together
    time.sleep(0.005)
clt, cfg = load_transcoder_from_hub(sys.argv[1], device=torch.device("cpu"), lazy_decoder=False)
x = torch.randn(clt.n_layers, 4, clt.d_model, generator=torch.Generator().manual_seed(0))
print(json.dumps({"path": clt.clt_path, "sum": float(clt.decode(clt.encode(x).to_sparse()).sum())}))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_processes_convert_once(tmp_path):
    import time

    from qwen_interp.apps.testing.clt_native import random_clt, write_native
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 4}))
    src = write_native(tmp_path / "src", random_clt(4, 32, 256, seed=3), layout="layer_weights",
                       decoder_layout="output_layer", base_model_name=str(model))
    cache = tmp_path / "cache"
    env = {**os.environ, "QWEN_INTERP_CACHE": str(cache)}
    start = str(time.time() + 4)
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(src), start], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]
    entries = [p.name for p in (cache / "clt").iterdir() if not p.name.endswith(".lock")]
    assert len(entries) == 1, entries  # one complete folder, no half-built leftovers
    built = cache / "clt" / entries[0]
    assert results[0]["path"] == str(built)
    mtimes = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    # A third load reuses the folder without writing.
    proc = subprocess.run([sys.executable, "-c", CONVERT, str(src), "0"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == mtimes


def test_changed_source_converts_again(tmp_path, monkeypatch):
    import qwen_interp  # noqa: F401
    import torch
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    from qwen_interp.apps.testing.clt_native import random_clt, write_native
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path / "cache"))
    src = write_native(tmp_path / "src", random_clt(2, 16, 8, seed=1))
    first, _ = load_transcoder_from_hub(str(src), device=torch.device("cpu"))
    write_native(tmp_path / "src", random_clt(2, 16, 8, seed=2))
    second, _ = load_transcoder_from_hub(str(src), device=torch.device("cpu"))
    assert first.clt_path != second.clt_path
    assert not torch.equal(first.b_enc, second.b_enc)


@pytest.mark.slow
@pytest.mark.subprocess
def test_no_noise_from_replacement_model_at_interpreter_exit(qwen_offline_hub, qwen_registry):
    """Upstream's __del__ prints an ignored TypeError when the interpreter exits with a
    TransformerLens replacement model alive; with the plugin it exits quietly."""
    import os
    import subprocess
    import sys
    release = qwen_registry.transcoder_release("bluelight-qwen3-1.7b")
    qwen_offline_hub.transcoder(release, qwen_registry.model(release.model_repo_id))
    code = """
{prelude}
import torch
import transformer_lens.supported_models as sm
from circuit_tracer import ReplacementModel
if "Qwen/Qwen3-1.7B-Base" not in sm.OFFICIAL_MODEL_NAMES:
    sm.OFFICIAL_MODEL_NAMES.append("Qwen/Qwen3-1.7B-Base")
rm = ReplacementModel.from_pretrained("Qwen/Qwen3-1.7B-Base", "bluelightai/clt-qwen3-1.7b-base-20k",
                                      device=torch.device("cpu"))
"""

    def stderr(prelude, plugins):
        env = {**os.environ, "QWEN_INTERP_PLUGINS": plugins}
        proc = subprocess.run([sys.executable, "-c", code.format(prelude=prelude)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    assert "Exception ignored" in stderr("", "")  # upstream as it is
    assert "Exception ignored" not in stderr("import qwen_interp",
                                             "qwen3,transformerlens,circuit_tracer")
