"""register_transcoder_formats: a third-party plugin's format is used by circuit-tracer's
loader for folders it recognises, and is gone when the plugin is unregistered."""

from __future__ import annotations

import pytest
import torch

from qwen_interp import hookimpl
from qwen_interp.specs import TranscoderFormat


def test_hook_register_transcoder_formats_third_party_format_loads(tmp_path, qwen_offline_hub,
                                                                     qwen_registry):
    import qwen_interp
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    from qwen_interp_circuit_tracer import TranscoderValidationError

    # A format of our own: a folder with ACME.txt naming the hub-layout folder to load.
    release = qwen_registry.transcoder_release("bluelight-qwen3-1.7b")
    hub_folder = qwen_offline_hub.transcoder(release, qwen_registry.model(release.model_repo_id))
    folder = tmp_path / "acme-clt"
    folder.mkdir()
    (folder / "ACME.txt").write_text(str(hub_folder))
    calls = []

    def load(path, **kwargs):
        calls.append(path)
        kwargs.pop("registry")
        return load_transcoder_from_hub(str(hub_folder), **{k: v for k, v in kwargs.items()
                                                            if k in ("device", "dtype")})[0]

    class AcmeFormat:
        @hookimpl
        def register_transcoder_formats(register):
            register(TranscoderFormat("acme", detect=lambda p: (p / "ACME.txt").is_file(),
                                      load=load))

    with pytest.raises(TranscoderValidationError, match="no registered transcoder format"):
        load_transcoder_from_hub(str(folder), device=torch.device("cpu"))
    qwen_interp.register_plugin(AcmeFormat, name="acme-format")
    try:
        clt, config = load_transcoder_from_hub(str(folder), device=torch.device("cpu"),
                                               dtype=torch.float32)
    finally:
        qwen_interp.unregister_plugin(AcmeFormat)
    assert calls == [folder] and config["format"] == "acme"
    assert clt.W_enc.shape[0] == 3  # the small 1.7B stand-in's layers
    assert "acme" not in qwen_interp.registry().transcoder_formats
