"""Co-activation profiles from a ``qwen-interp features compute`` run folder.

The run's ``tables/clt.parquet`` (or ``sae.parquet``) has, per feature, ``coactive``: the other
features of its block most often among the strongest at its top examples, with counts
(docs/feature-statistics.md). A feature's profile is the sparse vector over the features of its
block (row numbering as in :mod:`.vectors`) holding those counts, with the feature itself at its
largest partner count (so two features that fire together share two coordinates), scaled to
unit length. Sparse throughout: ``n x (partners + 1)`` non-zeros, ``O(n)`` memory for any width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .vectors import FeatureVectors

TABLES = {"clt": "clt.parquet", "sae": "sae.parquet"}


def table_path(run: str | Path, dictionary: str = "clt") -> Path:
    run = Path(run)
    if dictionary not in TABLES:
        raise ValueError(f"dictionary {dictionary!r}: expected clt or sae")
    path = run / "tables" / TABLES[dictionary]
    if not run.is_dir():
        raise ValueError(f"--features {run}: not a folder (expected a `qwen-interp features "
                         "compute` output folder)")
    if not path.is_file():
        raise ValueError(f"--features {run}: no {path.relative_to(run)} in it (co-activation "
                         "profiles need the run's tables)")
    return path


def coactivation_profiles(run: str | Path, dictionary: str = "clt", *, layers=None,
                          rows: int = 8192) -> FeatureVectors:
    """Unit-length sparse co-activation profiles of every feature in the run's table."""
    import pyarrow.parquet as pq
    from scipy.sparse import csr_matrix
    path = table_path(run, dictionary)
    try:
        table = pq.read_table(path, columns=["layer", "feature", "coactive"])
    except Exception as exc:  # noqa: BLE001 - a foreign or damaged file: one line
        raise ValueError(f"{path}: not a feature-statistics table ({exc})") from None
    layer = table.column("layer").to_numpy()
    feature = table.column("feature").to_numpy()
    present = tuple(sorted(set(layer.tolist())))
    chosen = present if layers is None else tuple(layers)
    missing = sorted(set(chosen) - set(present))
    if missing or not chosen:
        raise ValueError(f"--layers {','.join(map(str, chosen))}: {path} has layers "
                         f"{','.join(map(str, present))}")
    width = int(feature.max()) + 1
    slot = {l: i for i, l in enumerate(chosen)}
    coactive = table.column("coactive").to_pylist()
    r, c, v = [], [], []
    for lay, feat, partners in zip(layer.tolist(), feature.tolist(), coactive):
        if lay not in slot:
            continue
        row = slot[lay] * width + feat
        base = slot[lay] * width
        top = max((p["count"] for p in partners or []), default=1)
        r.append(row)
        c.append(row)
        v.append(float(top))
        for p in partners or []:
            if p["feature"] != feat:
                r.append(row)
                c.append(base + int(p["feature"]))
                v.append(float(p["count"]))
    n = len(chosen) * width
    m = csr_matrix((np.asarray(v, dtype=np.float32), (r, c)), shape=(n, n))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    m = csr_matrix(m.multiply(1.0 / norms[:, None]), dtype=np.float32)

    def chunks():
        for start in range(0, n, rows):
            yield m[start:start + rows]
    return FeatureVectors(dictionary, str(path), chosen, width, n, chunks, "coactivation")
