"""Mapper graphs at several nested cover resolutions, with KeplerMapper.

KeplerMapper (scikit-tda, ``kmapper``; van Veen et al., JOSS 4(42) 1315, 2019) runs the
algorithm of Singh, Mémoli and Carlsson (2007): cover the lens with overlapping hypercubes
(``kmapper.Cover``: ``n_cubes`` per lens dimension, ``perc_overlap``), cluster the points of each
hypercube in the clustering space, and join two clusters that share a point. Two pieces are
ours, both passed through KeplerMapper's own extension points:

- :class:`LandmarkSingleLinkage` (``clusterer=``): single linkage cut at ``eps`` on the
  ``k``-nearest-neighbour graph of landmarks (:class:`Landmarks`: the points themselves up to
  ``max_landmarks``, else k-means centres), restricted to a hypercube's landmarks; memory
  ``O(landmarks x k)``, never ``n x n``, and one neighbour search for all resolutions;
- :class:`SparseNerve` (``nerve=``): the edges from an inverted index (point -> the nodes holding
  it), linear in the memberships; KeplerMapper's ``GraphNerve`` compares all node pairs.

Nesting: with resolutions that divide one another (4, 8, 16) and one overlap, every hypercube of
the finer cover lies inside one of the coarser (``kmapper.Cover``: centres at
``min + (i + 1/2) w``, radius ``w / (2 (1 - overlap))``), so each fine node's members lie in one
coarse hypercube; its *parent* is the coarse node holding most of them, and ``contained`` says
whether it holds all of them (always with ``single``: a sub-hypercube's landmark graph is a
subgraph of its parent's; DBSCAN can, rarely, hand a border point to another cluster).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

CLUSTERERS = ("single", "dbscan")


class Landmarks:
    """Points -> landmarks, and the landmarks' single-linkage graph.

    Up to ``max_landmarks`` points, every point is its own landmark. Beyond, the landmarks are
    the centres of scikit-learn's ``KMeans`` (Lloyd, ``init="random"``, ``max_iter`` 5: a
    refined random sample, not a converged partition) and each point belongs to its nearest
    centre. The graph joins each landmark to its ``k`` nearest (scipy ``cKDTree``) when they are
    at most ``eps`` apart: ``O(landmarks x k)`` edges, never ``n x n``."""

    def __init__(self, space: np.ndarray, *, max_landmarks: int, k: int, seed: int = 0) -> None:
        from scipy.spatial import cKDTree
        n = len(space)
        if n <= max_landmarks:
            self.assign = np.arange(n)
            self.centers = np.asarray(space, dtype=np.float64)
        else:
            from sklearn.cluster import KMeans
            km = KMeans(n_clusters=max_landmarks, init="random", n_init=1, max_iter=5,
                        random_state=seed).fit(space)
            self.assign = km.labels_.astype(np.int64)
            self.centers = km.cluster_centers_.astype(np.float64)
        c = len(self.centers)
        kk = min(k + 1, c)  # +1: the landmark itself comes back first
        dist, idx = cKDTree(self.centers).query(self.centers, k=kk)
        self.dist, self.idx = dist.reshape(c, kk), idx.reshape(c, kk)

    def estimate_eps(self, quantile: float) -> float:
        """The ``quantile`` of the landmarks' distance to their ``k``-th nearest landmark."""
        eps = float(np.quantile(self.dist[:, -1], quantile)) if len(self.dist) > 1 else 1.0
        return eps if eps > 0 else 1e-6

    def edges(self, eps: float) -> np.ndarray:
        keep = (self.dist <= eps) & (self.idx != np.arange(len(self.idx))[:, None])
        rows = np.repeat(np.arange(len(self.idx)), self.idx.shape[1])[keep.ravel()]
        return np.c_[rows, self.idx.ravel()[keep.ravel()]]


class LandmarkSingleLinkage(ClusterMixin, BaseEstimator):
    """Single linkage of a hypercube's points through their landmarks: the connected components
    of the landmark graph restricted to the landmarks present. ``fit`` takes the landmark ids
    of the points (one column), as KeplerMapper hands a hypercube's rows of ``X``; components
    under ``min_size`` points are noise (-1). Restricting to a sub-hypercube only removes
    landmarks and edges, so a finer cluster always lies inside a coarser one."""

    def __init__(self, edges=None, n_landmarks: int = 0, min_size: int = 1) -> None:
        self.edges = edges
        self.n_landmarks = n_landmarks
        self.min_size = min_size

    def fit(self, X, y=None):
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
        ids = np.asarray(X, dtype=np.float64)[:, 0].astype(np.int64)
        if len(ids) == 0:
            self.labels_ = np.zeros(0, dtype=np.int64)
            return self
        present = np.zeros(self.n_landmarks, dtype=bool)
        present[ids] = True
        e = self.edges[present[self.edges[:, 0]] & present[self.edges[:, 1]]]
        graph = coo_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])),
                           shape=(self.n_landmarks, self.n_landmarks))
        _, comp = connected_components(graph, directed=False)
        labels = comp[ids]
        _, labels = np.unique(labels, return_inverse=True)
        sizes = np.bincount(labels)
        big = sizes >= self.min_size
        renumber = np.full(len(sizes), -1)
        renumber[big] = np.arange(int(big.sum()))
        self.labels_ = renumber[labels]
        return self


def make_clusterer(name: str, *, eps: float, min_size: int, landmarks: Landmarks | None = None):
    if name == "single":
        edges = landmarks.edges(eps) if landmarks is not None else np.zeros((0, 2), np.int64)
        n = len(landmarks.centers) if landmarks is not None else 0
        return LandmarkSingleLinkage(edges=edges, n_landmarks=n, min_size=min_size)
    if name == "dbscan":  # scikit-learn's, with a KD-tree: memory O(n x neighbours within eps)
        from sklearn.cluster import DBSCAN
        return DBSCAN(eps=eps, min_samples=max(min_size, 1), algorithm="kd_tree")
    raise ValueError(f"--clusterer {name!r}: expected one of {', '.join(CLUSTERERS)}")


class SparseNerve:
    """KeplerMapper's nerve interface (``compute(nodes) -> (links, simplices)``,
    ``min_intersection``) from an inverted index: linear in the memberships."""

    def __init__(self, min_intersection: int = 1) -> None:
        self.min_intersection = min_intersection

    def compute(self, nodes: dict):
        names = list(nodes)
        counts = _pair_counts([np.asarray(nodes[name], dtype=np.int64) for name in names])
        links: dict = {}
        for (a, b), count in counts.items():
            if count >= self.min_intersection:
                links.setdefault(names[a], []).append(names[b])
        simplices = [[n] for n in names] + [[a, b] for a in links for b in links[a]]
        return links, simplices


def _pair_counts(members: list[np.ndarray]) -> Counter:
    """{(i, j): shared points} for node pairs i < j that share a point."""
    if not members:
        return Counter()
    points = np.concatenate(members)
    owner = np.concatenate([np.full(len(m), i) for i, m in enumerate(members)])
    order = np.lexsort((owner, points))
    points, owner = points[order], owner[order]
    starts = np.flatnonzero(np.r_[True, points[1:] != points[:-1]])
    ends = np.r_[starts[1:], len(points)]
    counts: Counter = Counter()
    for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        held = owner[s:e].tolist()
        for i in range(len(held)):
            for j in range(i + 1, len(held)):
                counts[(held[i], held[j])] += 1
    return counts


@dataclass
class Level:
    """One cover resolution: nodes (member indices, ascending) and weighted edges."""
    resolution: int
    nodes: list[np.ndarray]
    edges: list[tuple[int, int, int]]  # (node, node, shared points), node < node
    parents: list[int | None] = field(default_factory=list)  # node of the previous level
    contained: list[bool] = field(default_factory=list)

    @property
    def components(self) -> int:
        return n_components(len(self.nodes), self.edges)

    @property
    def cycle_rank(self) -> int:
        """Independent cycles of the graph: E - V + C (its first Betti number)."""
        return len(self.edges) - len(self.nodes) + self.components


def n_components(n_nodes: int, edges) -> int:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    if n_nodes == 0:
        return 0
    e = np.asarray([(a, b) for a, b, *_ in edges], dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_nodes, n_nodes))
    return int(connected_components(graph, directed=False)[0])


def mapper_level(lens: np.ndarray, space: np.ndarray, resolution: int, overlap: float,
                 clusterer) -> Level:
    """One Mapper graph by KeplerMapper, nodes renumbered in KeplerMapper's order (hypercube,
    then cluster). Nodes with identical members (one cluster inside two overlapping
    hypercubes) are merged, as KeplerMapper's ``remove_duplicate_nodes`` does."""
    import kmapper
    graph = kmapper.KeplerMapper(verbose=0).map(
        lens, X=space, clusterer=clusterer,
        cover=kmapper.Cover(n_cubes=resolution, perc_overlap=overlap),
        nerve=SparseNerve(), remove_duplicate_nodes=True)
    names = list(graph["nodes"])
    nodes = [np.sort(np.asarray(graph["nodes"][name], dtype=np.int64)) for name in names]
    counts = _pair_counts(nodes)
    edges = [(a, b, c) for (a, b), c in sorted(counts.items())]
    return Level(resolution=resolution, nodes=nodes, edges=edges)


def link_levels(coarse: Level, fine: Level, n_points: int) -> None:
    """Set ``fine.parents`` / ``fine.contained`` from the coarse level's memberships."""
    owners: list[list[int]] = [[] for _ in range(n_points)]
    for i, members in enumerate(coarse.nodes):
        for p in members.tolist():
            owners[p].append(i)
    fine.parents, fine.contained = [], []
    for members in fine.nodes:
        votes = Counter(o for p in members.tolist() for o in owners[p])
        if not votes:
            fine.parents.append(None)
            fine.contained.append(False)
            continue
        parent, shared = votes.most_common(1)[0]
        fine.parents.append(int(parent))
        fine.contained.append(shared == len(members))


def check_resolutions(resolutions) -> tuple[int, ...]:
    res = tuple(int(r) for r in resolutions)
    if not res or any(r < 1 for r in res):
        raise ValueError(f"--resolutions {','.join(map(str, res))}: expected positive integers")
    for a, b in zip(res, res[1:]):
        if b <= a or b % a:
            raise ValueError(f"--resolutions {','.join(map(str, res))}: each must be a multiple "
                             f"of the one before ({b} is not a multiple of {a}), so the covers "
                             "nest")
    return res


def multiresolution(lens: np.ndarray, space: np.ndarray, resolutions, overlap: float,
                    clusterer) -> list[Level]:
    """Mapper graphs at each resolution (coarse to fine), each fine node linked to its parent.
    ``space``: what ``clusterer`` reads per hypercube (the points' landmark ids, one column, for
    :class:`LandmarkSingleLinkage`; coordinates for DBSCAN)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"--overlap {overlap}: expected a fraction in [0, 1)")
    levels: list[Level] = []
    for r in check_resolutions(resolutions):
        level = mapper_level(lens, space, r, overlap, clusterer)
        if levels:
            link_levels(levels[-1], level, len(space))
        else:
            level.parents, level.contained = [None] * len(level.nodes), [True] * len(level.nodes)
        levels.append(level)
    return levels
