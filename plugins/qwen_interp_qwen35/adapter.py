"""Adapter for ``transformers``: changes nothing upstream; it reports whether this environment
can run Qwen3.5 (``qwen-interp doctor``) and which path each model takes."""

from __future__ import annotations

from qwen_interp.adapters import INACTIVE, UPSTREAM, AdapterBase, Part, PartStatus
from qwen_interp.compat import installed_version

MIN_TRANSFORMERS = "5.2"  # first release with qwen3_5 / qwen3_5_moe (5.1.0 has neither)
PROFILE_HINT = ("Qwen3.5 needs transformers >= 5.2; install profile qwen35 "
                "(profiles/qwen35.txt: pip install -e . --no-deps -r profiles/qwen35.txt)")


def qwen35_supported(version: str | None = None) -> bool:
    from packaging.version import Version
    version = version or installed_version("transformers")
    return version is not None and Version(version) >= Version(MIN_TRANSFORMERS)


def bridge_architectures() -> set[str]:
    """Qwen3.5 text architectures the installed TransformerLens's TransformerBridge supports
    (empty if TL is absent or has no bridge for them)."""
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except Exception:  # noqa: BLE001 - TL absent, too old, or broken: HF hooks remain
        return set()
    return {a for a in ("Qwen3_5ForCausalLM", "Qwen3_5MoeForCausalLM")
            if a in SUPPORTED_ARCHITECTURES}


class Qwen35Adapter(AdapterBase):
    """No parts: transformers >= 5.2 runs Qwen3.5 as published, so nothing is patched. Its status
    says whether this environment can (``transformers``) and which path each model takes; it is
    read when asked, since finding the TransformerBridge path imports TransformerLens."""

    name = "qwen35"
    module = "transformers"

    def parts(self) -> list[Part]:
        return []

    def status(self) -> list[PartStatus]:
        version = installed_version("transformers")
        if not qwen35_supported(version):
            return [PartStatus(self.name, "transformers", INACTIVE,
                               f"transformers {version} has no Qwen3.5. {PROFILE_HINT}")]
        from .model import default_backend
        from .specs import QWEN35_MODELS
        rows = [PartStatus(self.name, "transformers", UPSTREAM,
                           f"transformers {version} runs Qwen3.5 (text model of the published "
                           "vision-language checkpoints)")]
        rows += [PartStatus(self.name, spec.repo_id, UPSTREAM,
                            f"load_model -> {default_backend(spec)}") for spec in QWEN35_MODELS]
        return rows
