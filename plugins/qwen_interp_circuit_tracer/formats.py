"""Transcoder formats this plugin registers, and the loader that picks one for a folder.

- ``circuit_tracer_hub``: circuit-tracer's own layout (``W_enc_{l}`` / ``W_dec_{l}``), with or
  without ``config.yaml``; validated, then loaded by upstream ``load_clt`` (or the top-k loader
  when a conversion-cache ``config.yaml`` says ``activation: topk``/``topk_all``).
- ``bluelight_native``: BluelightAI's ``single_file`` / ``layer_weights`` layouts (a folder with
  ``model_config.json``, the detection rule of BluelightAI's reference loader); validated,
  converted once into the cache (see ``cache.py``), then loaded like the hub layout, so the
  lazy decoder reads the converted per-layer files.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from qwen_interp.specs import TranscoderFormat, TranscoderRelease

from . import cache, native, upstream_parts
from .errors import TranscoderValidationError
from .validate import model_facts, validate_hub_layout


def is_hub_layout(folder) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any(folder.glob("W_enc_*.safetensors"))


def read_config_yaml(folder: Path) -> dict:
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TranscoderValidationError(path, None, f"unreadable config.yaml ({exc})") from None
    kind = cfg.get("model_kind", "cross_layer_transcoder")
    if kind != "cross_layer_transcoder":
        raise TranscoderValidationError(path, "model_kind", f"{kind!r}: only cross-layer "
                                        "transcoders are handled here")
    return cfg


def load_hub_layout(folder, release: TranscoderRelease | None = None, registry=None,
                    model_name: str | None = None, scan=None, **load_kwargs):
    """Validate then load a circuit-tracer-layout folder into a CrossLayerTranscoder. Hooks and
    model come from its ``config.yaml``, else from the release, else the caller."""
    folder = Path(folder)
    cfg = read_config_yaml(folder)
    in_hook = cfg.get("feature_input_hook") or (release and release.feature_input_hook)
    out_hook = cfg.get("feature_output_hook") or (release and release.feature_output_hook)
    if not (in_hook and out_hook):
        raise TranscoderValidationError(folder / "config.yaml", "feature_input_hook",
                                        "no config.yaml hooks and no registered release to "
                                        "take them from")
    model = model_name or cfg.get("model_name") or (release.model_repo_id if release else None)
    validate_hub_layout(folder, model_facts(model, registry))
    activation = cfg.get("activation")
    if activation not in (None, "relu", "jump_relu", "jumprelu", "topk", "topk_all"):
        raise TranscoderValidationError(folder / "config.yaml", "activation",
                                        f"unknown activation {activation!r}")
    return ct_layout_loader()(folder, activation=cfg.get("activation"), k=cfg.get("k"),
                          feature_input_hook=in_hook, feature_output_hook=out_hook,
                          scan=scan if scan is not None else str(folder), **load_kwargs)


def ct_layout_loader():
    """circuit-tracer's own top-k-aware loader where it has one, else this plugin's copy."""
    upstream = upstream_parts.upstream_module(upstream_parts.TOPK_MODULE)
    if upstream is not None:  # the topk patch is upstream: stand down
        return upstream.load_ct_layout
    from .topk import load_ct_layout
    return load_ct_layout


def convert_native_folder(folder, release: TranscoderRelease | None = None, registry=None,
                          model_name: str | None = None) -> Path:
    """Validate a native checkpoint and return its circuit-tracer-layout cache folder (converting
    it the first time). Nothing is written if validation fails."""
    hooks = (release.feature_input_hook, release.feature_output_hook) if release else None
    cfg = native.read_native_config(folder, default_hooks=hooks)
    model = model_name or cfg.base_model_name or (release.model_repo_id if release else None)
    facts = model_facts(model, registry)
    native.validate_native(cfg, facts)  # n_layers is the base model's: checked against facts
    files = ["model_config.json", *cfg.files]  # the files read (a missing listed one is skipped)
    if cfg.layout == "layer_weights":
        files.append("manifest.json")
    key = cache.source_key(cfg.folder, files)

    def build(tmp: Path) -> None:
        native.write_ct_layout(cfg, tmp, cfg.n_layers, model)

    name = release.repo_id if release else (model or "") + "-" + cfg.folder.name
    return cache.cached_build(name, key, build)


def load_native(folder, release=None, registry=None, model_name=None, scan=None, **load_kwargs):
    upstream = upstream_parts.upstream_module(upstream_parts.NATIVE_MODULE)
    if upstream is not None:  # circuit-tracer converts and loads native checkpoints itself
        return upstream.load_native_clt(folder, model_name=model_name or (
            release and release.model_repo_id), scan=scan if scan is not None else str(folder),
            **load_kwargs)
    converted = convert_native_folder(folder, release, registry, model_name)
    return load_hub_layout(converted, release, registry, model_name,
                           scan=scan if scan is not None else str(folder), **load_kwargs)


FORMATS = (
    TranscoderFormat("bluelight_native", detect=native.is_native, load=load_native),
    TranscoderFormat("circuit_tracer_hub", detect=is_hub_layout, load=load_hub_layout),
)


def load_folder(folder, registry, release=None, **kwargs):
    """Load with the first registered format that recognises ``folder``; returns the
    transcoder and a circuit-tracer-style config dict."""
    formats = registry.transcoder_formats.values() if registry is not None else FORMATS
    for fmt in formats:
        if fmt.detect(Path(folder)):
            clt = fmt.load(folder, release=release, registry=registry, **kwargs)
            return clt, {"model_kind": "cross_layer_transcoder", "format": fmt.name,
                         "feature_input_hook": clt.feature_input_hook,
                         "feature_output_hook": clt.feature_output_hook, "scan": clt.scan,
                         "path": str(folder)}
    raise TranscoderValidationError(folder, None, "no registered transcoder format recognises "
                                    f"this folder (formats: {[f.name for f in formats]})")
