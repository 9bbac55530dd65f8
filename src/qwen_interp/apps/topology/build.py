"""One call from feature vectors to a multiresolution Mapper map (docs/topology.md).

1. Reduce: streamed randomized PCA (:mod:`.reduce`) to ``dims`` coordinates, the clustering
   space; the lens is its first ``lens_dims`` coordinates (the top principal components).
2. Landmarks and scale (:class:`~.mapper.Landmarks`): every point up to ``landmarks`` points,
   else k-means centres; ``eps`` (unless given) is the ``eps_quantile`` of the landmarks'
   distance to their ``k``-th nearest landmark.
3. Mapper at each resolution (:mod:`.mapper`), coarse to fine, fine nodes linked to parents.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

__all__ = ["Settings", "TopologyMap", "map_features"]

import numpy as np

from .mapper import Landmarks, Level, make_clusterer, multiresolution
from .reduce import PCA, randomized_pca
from .settings import Settings
from .vectors import FeatureVectors


@dataclass
class TopologyMap:
    vectors: FeatureVectors
    settings: Settings
    pca: PCA
    eps: float
    landmarks: int
    levels: list[Level]
    seconds: dict = field(default_factory=dict)
    labels: list[list[dict]] = field(default_factory=list)  # per level, per node

    @property
    def lens(self) -> np.ndarray:
        return self.pca.scores[:, :self.settings.lens_dims]

    def settings_dict(self) -> dict:
        out = asdict(self.settings)
        out["resolutions"] = list(self.settings.resolutions)
        out["eps_used"] = self.eps
        out["landmarks_used"] = self.landmarks
        return out


def map_features(vectors: FeatureVectors, settings: Settings | None = None) -> TopologyMap:
    """The multiresolution Mapper map of ``vectors`` (no labels; see :mod:`.labels`)."""
    settings = settings or Settings()
    settings.check()
    if vectors.n < 2:
        raise ValueError(f"{vectors.name}: {vectors.n} feature(s); a map needs at least 2")
    t0 = time.perf_counter()
    pca = randomized_pca(vectors.chunks, settings.dims, power_iters=settings.power_iters,
                         seed=settings.seed)
    t1 = time.perf_counter()
    space = pca.scores
    lens = space[:, :settings.lens_dims]
    marks = Landmarks(space, max_landmarks=settings.landmarks, k=settings.k, seed=settings.seed)
    eps = settings.eps or marks.estimate_eps(settings.eps_quantile)
    clusterer = make_clusterer(settings.clusterer, eps=eps, min_size=settings.min_size,
                               landmarks=marks)
    data = marks.assign[:, None] if settings.clusterer == "single" else space
    levels = multiresolution(lens, data, settings.resolutions, settings.overlap, clusterer)
    t2 = time.perf_counter()
    return TopologyMap(vectors, settings, pca, eps, len(marks.centers), levels,
                       seconds={"reduce": round(t1 - t0, 3), "mapper": round(t2 - t1, 3)})
