"""The Mapper settings of ``qwen-interp topology`` (defaults and checks), apart from the code
that runs them so the command line reads its defaults without importing scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass


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
        from .mapper import check_resolutions, make_clusterer  # scikit-learn: on use only
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
