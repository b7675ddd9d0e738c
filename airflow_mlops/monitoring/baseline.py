"""Training-data profiles ("baselines") that drift is measured against.

A profile is a JSON-able dict stored with a model version
(``MlflowRegistryHook.register_model(..., baseline=profile)``)::

    {"kind": "airflow-mlops/baseline", "format_version": 1, "rows": 1347, "bins": 10,
     "features": [{"name": "f0", "count": 1347, "missing": 0, "mean": ..., "std": ...,
                   "min": ..., "max": ..., "edges": [...], "proportions": [...]}, ...],
     "sample": [[...], ...]}

``edges`` are the interior quantile cut points of the training data (duplicates removed, so a
feature with a big point mass gets fewer bins); bin ``i`` holds values in
``(edges[i-1], edges[i]]`` with open ends, and ``proportions`` is the training share per bin
(what PSI compares with). ``sample`` is a uniform random sample of whole rows, without
replacement, drawn with a fixed seed: the Kolmogorov-Smirnov test compares against it, and
retraining can reuse it as the "old" data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from airflow_mlops.exceptions import MonitoringError

__all__ = [
    "BASELINE_KIND",
    "baseline_feature_names",
    "baseline_sample",
    "bin_proportions",
    "default_feature_names",
    "profile_dataset",
]

BASELINE_KIND = "airflow-mlops/baseline"
_FORMAT_VERSION = 1


def default_feature_names(n_features: int) -> list[str]:
    """Return ``f0 … f{n-1}``: the names of positional (matrix) features."""
    return [f"f{i}" for i in range(n_features)]


def _as_matrix(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise MonitoringError(f"expected a 2-D feature matrix (rows x features), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise MonitoringError(f"features must be numeric: {e}") from e
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def bin_proportions(sorted_col: np.ndarray, edges: np.ndarray, valid: int) -> np.ndarray:
    """Return the share of a sorted column's values in each bin defined by interior ``edges``.

    :param sorted_col: the column sorted ascending (NaN last, as ``np.sort`` puts it).
    :param edges: interior cut points; bin ``i`` is ``(edges[i-1], edges[i]]``.
    :param valid: number of non-NaN values at the head of ``sorted_col``.
    """
    if valid == 0:
        return np.zeros(len(edges) + 1)
    cum = np.searchsorted(sorted_col[:valid], edges, side="right")
    counts = np.diff(np.concatenate(([0], cum, [valid])))
    return counts / valid


def profile_dataset(
    x: Any,
    feature_names: Sequence[str] | None = None,
    sample_size: int = 1000,
    bins: int = 10,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Summarise a training feature matrix for later drift checks; return a JSON-able dict.

    :param x: the training features, ``rows x features`` (a 1-D array is one feature).
    :param feature_names: one name per column; default ``f0 … f{n-1}``.
    :param sample_size: rows kept as the sample (all of them if there are fewer).
    :param bins: quantile bins per feature for the population stability index.
    :param seed: seed of the sample, so that a profile is reproducible.
    """
    arr = _as_matrix(x)
    rows, n_features = arr.shape
    if rows == 0:
        raise MonitoringError("cannot profile an empty dataset")
    if bins < 2:
        raise MonitoringError(f"bins must be at least 2, got {bins}")
    names = list(feature_names) if feature_names is not None else default_feature_names(n_features)
    if len(names) != n_features or len(set(names)) != n_features:
        raise MonitoringError(f"need {n_features} distinct feature names, got {names!r}")
    features = []
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    for j, name in enumerate(names):
        col = np.sort(arr[:, j])
        valid = int(np.count_nonzero(~np.isnan(col)))
        entry: dict[str, Any] = {"name": str(name), "count": valid, "missing": rows - valid}
        if valid == 0:
            entry.update(mean=None, std=None, min=None, max=None, edges=[], proportions=[1.0])
            features.append(entry)
            continue
        head = col[:valid].astype(np.float64)
        edges = np.unique(np.quantile(head, quantiles))
        # A cut at the maximum would leave the last bin empty by construction.
        edges = edges[edges < head[-1]]
        entry.update(
            mean=float(head.mean()),
            std=float(head.std()),
            min=float(head[0]),
            max=float(head[-1]),
            edges=[float(e) for e in edges],
            proportions=[float(p) for p in bin_proportions(head, edges, valid)],
        )
        features.append(entry)
    take = min(int(sample_size), rows)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(rows, size=take, replace=False)) if take < rows else np.arange(rows)
    sample = arr[picked].astype(np.float64)
    return {
        "kind": BASELINE_KIND,
        "format_version": _FORMAT_VERSION,
        "rows": int(rows),
        "bins": int(bins),
        "features": features,
        # NaN is not JSON: missing values travel as null.
        "sample": [[None if v != v else float(v) for v in row] for row in sample.tolist()],
    }


def _check(profile: dict[str, Any]) -> None:
    if not isinstance(profile, dict) or profile.get("kind") != BASELINE_KIND:
        raise MonitoringError("not an airflow-mlops baseline profile (see baseline.profile_dataset)")


def baseline_feature_names(profile: dict[str, Any]) -> list[str]:
    """Return the feature names of a profile, in column order."""
    _check(profile)
    return [f["name"] for f in profile["features"]]


def baseline_sample(profile: dict[str, Any]) -> np.ndarray:
    """Return a profile's row sample as a float64 matrix (missing values as NaN)."""
    _check(profile)
    n = len(profile["features"])
    sample = profile.get("sample") or []
    if not sample:
        return np.empty((0, n))
    return np.array([[np.nan if v is None else v for v in row] for row in sample], dtype=np.float64)
