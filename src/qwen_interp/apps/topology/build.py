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

import numpy as np

from .mapper import Landmarks, Level, check_resolutions, make_clusterer, multiresolution
from .reduce import PCA, randomized_pca
from .vectors import FeatureVectors


@dataclass
class Settings:
    dims: int = 16  # PCA coordinates the clustering runs in
    lens_dims: int = 2  # leading PCA coordinates used as the lens (1 or 2 usual)
    resolutions: tuple[int, ...] = (4, 8, 16)  # hypercubes per lens dimension, coarse to fine
    overlap: float = 0.3  # kmapper.Cover perc_overlap
    clusterer: str = "single"  # single (landmark k-NN single linkage) | dbscan
    k: int = 10  # neighbours per landmark in the single-linkage graph
    landmarks: int = 8192  # up to this many points, every point is a landmark
    eps: float | None = None  # None: estimated (eps_quantile of k-th neighbour distances)
    eps_quantile: float = 0.99
    min_size: int = 3  # smaller clusters are noise (KeplerMapper's default DBSCAN min_samples)
    power_iters: int = 2
    seed: int = 0

    def check(self) -> None:
        if self.dims < 1:
            raise ValueError(f"--dims {self.dims}: expected a positive integer")
        if not 1 <= self.lens_dims <= self.dims:
            raise ValueError(f"--lens-dims {self.lens_dims}: expected 1..--dims ({self.dims})")
        if self.lens_dims > 3:
            raise ValueError(f"--lens-dims {self.lens_dims}: at most 3 (the cover has "
                             "resolution^lens_dims hypercubes)")
        check_resolutions(self.resolutions)
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"--overlap {self.overlap}: expected a fraction in [0, 1)")
        if self.k < 1 or self.min_size < 1 or self.landmarks < 2:
            raise ValueError("--k and --min-size must be positive, --landmarks at least 2")
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"--eps {self.eps}: expected a positive distance")
        if not 0.0 < self.eps_quantile <= 1.0:
            raise ValueError(f"--eps-quantile {self.eps_quantile}: expected a fraction in (0, 1]")
        make_clusterer(self.clusterer, eps=1.0, min_size=self.min_size)


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
