"""Does this checkpoint belong to this model? Registry logic, shared by every plugin and app.

- :func:`pairing_mismatch` / :func:`check_pairing`: a registered transcoder (CLT) used with a
  registered model it was not trained on, found from the two names alone, before either loads.
- :func:`paired_with`: the model a transcoder is being loaded *for*, while it loads. A loader
  reads it with :func:`current_pairing` to check the transcoder's width and hook names against
  that model before reading any weight (the loader does not otherwise know the model).
- :func:`check_sae_fits_model`: an SAE against a model in memory (TransformerLens or HF).

Only the core is imported here; torch-free.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import CheckpointError


# --- transcoder and model ----------------------------------------------------------------------
class PairingError(CheckpointError):
    """A registered transcoder is paired with a registered model it was not trained on."""

    def __init__(self, mismatch: PairingMismatch) -> None:
        self.mismatch = mismatch
        super().__init__(f"{mismatch.transcoder}: {mismatch.problem}")


@dataclass(frozen=True)
class PairingMismatch:
    transcoder: str  # the transcoder release's repo id
    trained_on: str  # the model repo id it was trained on
    model: str  # the model repo id it was paired with

    @property
    def problem(self) -> str:
        return f"this CLT was trained on {self.trained_on}, not on {self.model}; nothing was loaded"


def pairing_mismatch(registry: Any, model_name: object,
                     transcoder: object) -> PairingMismatch | None:
    """The mismatch when ``transcoder`` (repo id or alias, optional ``@revision``) and
    ``model_name`` (repo id or alias) are both registered and the transcoder was trained on
    another model; None otherwise (either unregistered: there is nothing to compare)."""
    try:
        release = registry.transcoder_release(str(transcoder).partition("@")[0])
        model = registry.model(str(model_name))
    except KeyError:
        return None
    if model.repo_id == release.model_repo_id:
        return None
    return PairingMismatch(release.repo_id, release.model_repo_id, model.repo_id)


def check_pairing(registry: Any, model_name: object, transcoder: object) -> None:
    """Raise :class:`PairingError` for a registered transcoder paired with another registered
    model (before loading either). Plugins may raise their own error from
    :func:`pairing_mismatch` instead, as the circuit-tracer plugin does."""
    mismatch = pairing_mismatch(registry, model_name, transcoder)
    if mismatch is not None:
        raise PairingError(mismatch)


@dataclass(frozen=True)
class Pairing:
    """The model a transcoder is being loaded for (``backend`` None: not known)."""

    model_name: str
    backend: str | None = "transformerlens"


_PAIRING: contextvars.ContextVar[Pairing | None] = contextvars.ContextVar(
    "qwen_interp_pairing", default=None)


@contextlib.contextmanager
def paired_with(model_name: object, backend: str | None = "transformerlens") -> Iterator[Pairing]:
    """While open, transcoders loaded in this context are loaded for ``model_name`` (on
    ``backend``): loaders check them against it (:func:`current_pairing`)."""
    pairing = Pairing(str(model_name), backend)
    token = _PAIRING.set(pairing)
    try:
        yield pairing
    finally:
        _PAIRING.reset(token)


def current_pairing() -> Pairing | None:
    """The innermost open :func:`paired_with`, or None."""
    return _PAIRING.get()


# --- SAE and model -----------------------------------------------------------------------------
class SAEModelMismatchError(CheckpointError):
    """An SAE is used with a model it was not trained on."""


def check_sae_fits_model(sae: Any, model: Any, registry: Any = None) -> None:
    """Raise :class:`SAEModelMismatchError` if ``sae`` (a SAELens ``SAE``) cannot belong to
    ``model`` (a TL ``HookedTransformer`` or an HF model): different width, a layer the model
    lacks, or a model that is a different registered checkpoint."""
    if registry is None:
        import qwen_interp
        registry = qwen_interp.registry()
    d_model, n_layers, name = _model_facts(model)
    meta = sae.cfg.metadata
    sae_model = getattr(meta, "model_name", None) or "?"
    what = f"SAE for {sae_model} at {getattr(meta, 'hook_name', '?')} (d_in {sae.cfg.d_in})"
    if sae.cfg.d_in != d_model:
        raise SAEModelMismatchError(f"{what} does not fit model {name!r} with d_model {d_model}")
    layer = _layer_of_hook(getattr(meta, "hook_name", "") or "")
    if layer is not None and layer >= n_layers:
        raise SAEModelMismatchError(f"{what}: model {name!r} has only {n_layers} layers")
    known = {s.repo_id.split("/")[-1].lower(): s.repo_id for s in registry.models.values()}
    model_repo = known.get(str(name).split("/")[-1].lower())
    if model_repo and sae_model != "?" and model_repo.lower() != sae_model.lower():
        raise SAEModelMismatchError(f"{what} is used with {model_repo}")


def _model_facts(model: Any) -> tuple[int, int, str]:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "d_model"):  # TransformerLens
        return cfg.d_model, cfg.n_layers, cfg.model_name
    hf = model.config  # HF transformers
    return hf.hidden_size, hf.num_hidden_layers, getattr(hf, "_name_or_path", "") or ""


def _layer_of_hook(hook_name: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None
