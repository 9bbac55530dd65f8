"""What each block of the statistics keeps (:class:`StatsConfig`), apart from the torch code so
that building the command line (``features compute``'s defaults) imports no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StatsConfig:
    """What each block keeps; part of a run's identity (a resumed run must use the same)."""

    top_k: int = 16  # highest activations kept per feature
    samples: int = 24  # uniform random firing tokens kept per feature
    before: int = 15  # window: tokens before the example's token
    after: int = 4  # window: tokens after it
    partners: int = 8  # strongest other features recorded at each example token
    bins: int = 256  # log-spaced histogram bins ...
    hist_min: float = 1e-4  # ... from here (the first bin holds everything below)
    hist_max: float = 1e4  # ... to here (the last bin holds everything above)

    @property
    def window(self) -> int:
        return self.before + 1 + self.after

    def check(self) -> None:
        for name in ("top_k", "samples", "partners", "bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.before < 0 or self.after < 0:
            raise ValueError(f"window sizes must be >= 0, got before={self.before}, "
                             f"after={self.after}")
        if not 0 < self.hist_min < self.hist_max:
            raise ValueError(f"histogram range must satisfy 0 < min < max, got "
                             f"{self.hist_min}..{self.hist_max}")
        if self.bins < 3:
            raise ValueError(f"bins must be at least 3 (below, inside, above), got {self.bins}")
