"""The vectors a map is made of: one row per dictionary feature, streamed in chunks.

- CLT (circuit-tracer's ``CrossLayerTranscoder``, as ``load_transcoder_from_hub`` returns it):
  *encoder*: layer ``l``'s ``W_enc[l]`` rows (``d_transcoder x d_model``); *decoder*: feature
  ``f`` of layer ``l`` writes ``W_dec[l][f]`` (``(n_layers - l) x d_model``) into layers
  ``l..n_layers-1``; its vector is the sum of those rows (``--decoder sum``, its total write to
  the residual stream, the direction ``features compute`` uses for logit effects) or the row to
  its own layer (``--decoder own``). Read through the transcoder's own (lazy) accessors, a chunk
  of features at a time, so a 1.7B CLT's 34 GB of decoder never sits in memory.
- A per-layer transcoder set (``TranscoderSet``): each layer's ``W_enc`` / ``W_dec``.
- SAELens ``SAE``: *encoder* ``W_enc`` columns, *decoder* ``W_dec`` rows (``d_sae x d_in``).

Rows are numbered layer by layer: row ``i`` is feature ``i % width`` of ``layers[i // width]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

KINDS = ("decoder", "encoder")
DECODER_MODES = ("sum", "own")
CHUNK = 2048


@dataclass
class FeatureVectors:
    dictionary: str  # "clt" | "sae" (the Explorer's feature-page ``dict``)
    name: str
    layers: tuple[int, ...]
    width: int
    dim: int
    chunks: Callable[[], Iterator[np.ndarray]]  # float32 rows in order, any chunking
    source: str = "decoder"

    @property
    def n(self) -> int:
        return len(self.layers) * self.width

    def feature(self, i: int) -> tuple[int, int]:
        """(layer, feature) of row ``i``."""
        return self.layers[i // self.width], i % self.width

    @property
    def nbytes(self) -> int:
        return self.n * self.dim * 4


def from_array(x: np.ndarray, *, dictionary: str = "clt", name: str = "array",
               layers=None, source: str = "decoder", rows: int = 8192) -> FeatureVectors:
    """Rows of an in-memory (or memory-mapped) ``(n, d)`` array; ``layers`` default: one."""
    if x.ndim != 2:
        raise ValueError(f"expected an (n, d) array of vectors, got shape {x.shape}")
    layers = tuple(layers) if layers is not None else (0,)
    if x.shape[0] % len(layers):
        raise ValueError(f"{x.shape[0]} rows do not split into {len(layers)} equal layers")

    def chunks():
        for start in range(0, x.shape[0], rows):
            yield np.asarray(x[start:start + rows], dtype=np.float32)
    return FeatureVectors(dictionary, name, layers, x.shape[0] // len(layers), x.shape[1],
                          chunks, source)


def _check(kind: str, decoder: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"--source {kind!r}: expected one of {', '.join(KINDS)} (or "
                         "coactivation)")
    if decoder not in DECODER_MODES:
        raise ValueError(f"--decoder {decoder!r}: expected one of {', '.join(DECODER_MODES)}")


def _layers(given, n_layers: int) -> tuple[int, ...]:
    layers = tuple(range(n_layers)) if given is None else tuple(given)
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise ValueError(f"--layers {','.join(map(str, layers))}: the dictionary has layers "
                         f"0..{n_layers - 1}")
    return layers


def clt_vectors(clt, kind: str = "decoder", *, layers=None, decoder: str = "sum",
                name: str = "clt", chunk: int = CHUNK) -> FeatureVectors:
    """A circuit-tracer CLT's (or transcoder set's) encoder or decoder vectors."""
    import torch
    _check(kind, decoder)
    n_layers = int(clt.n_layers) if hasattr(clt, "n_layers") else len(clt)
    layers = _layers(layers, n_layers)
    cross = hasattr(clt, "_get_decoder_vectors")
    if cross:
        width, dim = int(clt.d_transcoder), int(clt.d_model)
    else:  # TranscoderSet: one SingleLayerTranscoder per layer
        first = clt[0]
        width, dim = int(first.d_transcoder), int(first.d_model)

    def rows(layer: int, ids: torch.Tensor) -> torch.Tensor:
        if not cross:
            t = clt[layer]
            return (t.W_enc.T[ids] if kind == "encoder" else t.W_dec[ids])
        block = clt._get_decoder_vectors(layer, ids)  # (chunk, n_layers - layer, d_model)
        return block.sum(dim=1) if decoder == "sum" else block[:, 0]

    def chunks():
        with torch.no_grad():
            for layer in layers:
                # a lazy encoder is read a layer at a time (168 MB at 20,480 x 2,048 float32)
                enc = clt._get_encoder_weights(layer) if cross and kind == "encoder" else None
                for start in range(0, width, chunk):
                    ids = torch.arange(start, min(start + chunk, width))
                    part = enc[ids] if enc is not None else rows(layer, ids)
                    yield part.float().cpu().numpy()
    return FeatureVectors("clt", name, layers, width, dim, chunks, kind)


def sae_vectors(saes: dict, kind: str = "decoder", *, name: str = "sae",
                chunk: int = CHUNK) -> FeatureVectors:
    """SAELens SAEs (``{layer: SAE}``, equal widths): ``W_enc`` columns or ``W_dec`` rows."""
    import torch
    _check(kind, "sum")
    if not saes:
        raise ValueError("no SAE given")
    layers = tuple(sorted(saes))
    widths = {int(saes[l].W_dec.shape[0]) for l in layers}
    if len(widths) != 1:
        raise ValueError(f"SAEs of different widths {sorted(widths)}: map one width at a time")
    width, dim = widths.pop(), int(saes[layers[0]].W_dec.shape[1])

    def chunks():
        with torch.no_grad():
            for layer in layers:
                sae = saes[layer]
                for start in range(0, width, chunk):
                    part = (sae.W_enc[:, start:start + chunk].T if kind == "encoder"
                            else sae.W_dec[start:start + chunk])
                    yield part.float().cpu().numpy()
    return FeatureVectors("sae", name, layers, width, dim, chunks, kind)


def load_clt(transcoder: str, device: str = "cpu"):
    """A CLT by repo id, alias or folder, with lazy encoder and decoder (read on demand)."""
    import torch

    import qwen_interp  # noqa: F401 - registers the CLT formats and the Hub loader's patch
    from circuit_tracer.utils import hf_utils
    clt, _ = hf_utils.load_transcoder_from_hub(transcoder, device=device, dtype=torch.float32,
                                               lazy_encoder=True, lazy_decoder=True)
    return clt


def materialize(vectors: FeatureVectors, folder=None, *, in_memory_bytes: int = 1 << 30
                ) -> FeatureVectors:
    """Read an expensive source once (the PCA reads the rows ``4 + 2q`` times): into memory up
    to ``in_memory_bytes``, else into a float32 memmap ``folder/vectors.f32`` (a new temporary
    folder when ``folder`` is None), whose pages the OS may drop."""
    import tempfile
    from pathlib import Path
    if vectors.nbytes <= in_memory_bytes:
        parts = list(vectors.chunks())
        x = np.concatenate(parts) if parts else np.zeros((0, vectors.dim), np.float32)
        return _like(vectors, x)
    folder = Path(folder if folder is not None else tempfile.mkdtemp(prefix="qwen-topology-"))
    x = np.memmap(folder / "vectors.f32", dtype=np.float32, mode="w+",
                  shape=(vectors.n, vectors.dim))
    start = 0
    for part in vectors.chunks():
        x[start:start + len(part)] = part
        start += len(part)
    x.flush()
    return _like(vectors, x)


def _like(vectors: FeatureVectors, x: np.ndarray) -> FeatureVectors:
    return from_array(x, dictionary=vectors.dictionary, name=vectors.name,
                      layers=vectors.layers, source=vectors.source)
