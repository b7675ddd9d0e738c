"""Per-feature drift of current data against a baseline profile: PSI and two-sample KS.

Both statistics come out of one sort per feature of the current data, so a million rows by
64 features costs 64 column sorts plus a few small ``searchsorted`` calls:

* **Population stability index** over the baseline's quantile bins:
  ``PSI = sum((a - e) * ln(a / e))`` with ``e``/``a`` the baseline/current share per bin, each
  floored at ``epsilon`` so an empty bin does not give an infinite score. Rule of thumb:
  < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift (the default threshold).
* **Kolmogorov-Smirnov** (two-sample, two-sided) between the baseline's row sample and the
  current column. ``D = sup |F_ref - F_cur|`` is reached at a jump of one of the two empirical
  CDFs; between two consecutive reference values ``F_ref`` is flat and ``F_cur`` rises, so
  ``D`` is the largest gap at each reference value or just before it: two ``searchsorted`` of
  the (at most ``sample_size``) reference values into the sorted current column. The p-value
  is the asymptotic Kolmogorov distribution at ``sqrt(n*m/(n+m)) * D`` (what
  ``scipy.stats.ks_2samp(method="asymp")`` uses for large samples, computed here in NumPy).

A feature drifts when its PSI reaches ``psi_threshold`` or its KS p-value falls below
``ks_pvalue`` (Bonferroni-corrected across features by default: with 64 features and no
correction, a 1 % test would flag some feature in about half of all no-drift windows). Note
that on very large windows KS flags shifts too small to matter; PSI does not grow with the
row count, which is why both are reported and either threshold can be switched off (``None``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from airflow_mlops.exceptions import MonitoringError
from airflow_mlops.monitoring.baseline import (
    baseline_feature_names,
    baseline_sample,
    bin_proportions,
    default_feature_names,
)

__all__ = [
    "DriftResult",
    "FeatureDrift",
    "align_features",
    "compute_drift",
    "kolmogorov_sf",
]

PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class FeatureDrift:
    """Drift statistics of one feature.

    :param name: feature name.
    :param psi: population stability index against the baseline bins.
    :param ks_statistic: two-sample Kolmogorov-Smirnov statistic ``D``.
    :param ks_pvalue: its asymptotic p-value.
    :param baseline_mean: mean of the feature in the training data.
    :param current_mean: mean in the current data.
    :param current_count: non-missing values in the current data.
    :param drifted: whether a threshold was crossed.
    """

    name: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    baseline_mean: float | None
    current_mean: float | None
    current_count: int
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    """Drift of a dataset: the per-feature table and the overall verdict.

    :param features: one entry per baseline feature, in baseline column order.
    :param rows: rows in the current data.
    :param baseline_rows: rows the baseline was profiled from.
    :param psi_threshold: PSI at or above which a feature drifts (``None``: PSI not used).
    :param ks_pvalue: KS significance level before correction (``None``: KS not used).
    :param ks_alpha: the per-feature level actually applied (after Bonferroni).
    :param min_drifted_features: how many drifted features make the dataset drifted.
    """

    features: list[FeatureDrift]
    rows: int
    baseline_rows: int
    psi_threshold: float | None
    ks_pvalue: float | None
    ks_alpha: float | None
    min_drifted_features: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def drifted_features(self) -> list[str]:
        """Return the names of the features that crossed a threshold."""
        return [f.name for f in self.features if f.drifted]

    @property
    def drifted(self) -> bool:
        """Tell whether enough features drifted to call the dataset drifted."""
        return len(self.drifted_features) >= self.min_drifted_features

    @property
    def max_psi(self) -> float:
        """Return the largest PSI over the features (0 when there are none)."""
        return max((f.psi for f in self.features), default=0.0)

    @property
    def max_ks_statistic(self) -> float:
        """Return the largest KS statistic over the features."""
        return max((f.ks_statistic for f in self.features), default=0.0)

    def to_rows(self) -> list[dict[str, Any]]:
        """Return the per-feature table as JSON-able dicts, in column order."""
        return [_jsonable(asdict(f)) for f in self.features]

    def summary(self) -> dict[str, Any]:
        """Return the verdict without the table (small enough for tags and logs)."""
        return {
            "drifted": self.drifted,
            "drifted_features": self.drifted_features,
            "features": len(self.features),
            "rows": self.rows,
            "baseline_rows": self.baseline_rows,
            "max_psi": _num(self.max_psi),
            "max_ks_statistic": _num(self.max_ks_statistic),
            "psi_threshold": self.psi_threshold,
            "ks_pvalue": self.ks_pvalue,
            "ks_alpha": self.ks_alpha,
            "min_drifted_features": self.min_drifted_features,
            **self.extra,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the verdict and the table (the XCom form)."""
        return {**self.summary(), "table": self.to_rows()}

    def to_table(self, limit: int | None = None) -> str:
        """Return a fixed-width text table for task logs: drifted features first, then by PSI.

        :param limit: show at most this many features (the rest are counted).
        """
        order = sorted(self.features, key=lambda f: (not f.drifted, -_key(f.psi), -_key(f.ks_statistic)))
        shown = order if limit is None else order[:limit]
        width = max([len("feature")] + [len(f.name) for f in shown])
        head = (
            f"{'feature':<{width}}  {'psi':>8}  {'ks_stat':>8}  {'ks_p':>9}  "
            f"{'base_mean':>10}  {'cur_mean':>10}  drift"
        )
        lines = [head, "-" * len(head)]
        for f in shown:
            lines.append(
                f"{f.name:<{width}}  {_fmt(f.psi, '8.4f')}  {_fmt(f.ks_statistic, '8.4f')}  "
                f"{_fmt(f.ks_pvalue, '9.2e')}  {_fmt(f.baseline_mean, '10.4g')}  "
                f"{_fmt(f.current_mean, '10.4g')}  {'YES' if f.drifted else 'no'}"
            )
        if len(shown) < len(order):
            lines.append(f"... {len(order) - len(shown)} more features")
        verdict = "DRIFT" if self.drifted else "no drift"
        lines.append(
            f"{verdict}: {len(self.drifted_features)} of {len(self.features)} features drifted "
            f"({self.rows} rows vs baseline of {self.baseline_rows}; psi >= {self.psi_threshold}, "
            f"ks p < {self.ks_alpha if self.ks_alpha is None else f'{self.ks_alpha:.3g}'})"
        )
        return "\n".join(lines)


def _key(value: float) -> float:
    return -1.0 if value != value else value


def _num(value: float | None) -> float | None:
    if value is None or value != value or math.isinf(value):
        return None
    return float(value)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _num(v) if isinstance(v, float) else v for k, v in row.items()}


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    if value is None or value != value:
        return f"{'-':>{width}}"
    return format(value, spec)


def kolmogorov_sf(x: np.ndarray | float) -> np.ndarray:
    """Return the survival function of the Kolmogorov distribution, ``P(K > x)``, vectorised.

    Uses the alternating series ``2 sum (-1)^(k-1) exp(-2 k^2 x^2)`` for ``x >= 1`` and the
    Jacobi-theta form ``1 - sqrt(2 pi)/x sum exp(-(2k-1)^2 pi^2 / (8 x^2))`` below, where
    each converges in a handful of terms.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    out = np.ones_like(x)
    k = np.arange(1, 101, dtype=np.float64)[:, None]
    big = x >= 1.0
    if big.any():
        xb = x[big][None, :]
        signs = np.where(k % 2 == 1, 1.0, -1.0)
        out[big] = 2.0 * np.sum(signs * np.exp(-2.0 * k**2 * xb**2), axis=0)
    small = (x > 0) & ~big
    if small.any():
        xs = x[small][None, :]
        terms = np.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * xs**2))
        cdf = math.sqrt(2 * math.pi) / xs[0] * np.sum(terms, axis=0)
        out[small] = 1.0 - cdf
    return np.clip(out, 0.0, 1.0)


def align_features(
    current: np.ndarray, current_names: Sequence[str] | None, baseline_names: Sequence[str]
) -> np.ndarray:
    """Return the current columns in the baseline's order.

    By name when the current data names every baseline feature; by position when it has
    unnamed (``f0 …``) columns of the same count.

    :raises MonitoringError: the columns cannot be matched.
    """
    width = current.shape[1]
    names = list(current_names) if current_names is not None else default_feature_names(width)
    wanted = list(baseline_names)
    index = {n: i for i, n in enumerate(names)}
    if all(n in index for n in wanted):
        order = [index[n] for n in wanted]
        return current if order == list(range(width)) else current[:, order]
    if width == len(wanted) and names == default_feature_names(width):
        return current
    missing = [n for n in wanted if n not in index][:10]
    raise MonitoringError(
        f"current data has {width} columns that do not match the baseline's {len(wanted)} "
        f"features (missing e.g. {missing})"
    )


@dataclass
class _Reference:
    """What one feature's statistics need from the baseline, prepared once."""

    values: np.ndarray  # distinct sorted sample values
    cdf: np.ndarray  # baseline sample ECDF at each of them
    n: int
    edges: np.ndarray
    expected: np.ndarray
    mean: float | None


def _references(profile: dict[str, Any]) -> list[_Reference]:
    sample = baseline_sample(profile)
    refs = []
    for j, feature in enumerate(profile["features"]):
        col = sample[:, j] if sample.size else np.empty(0)
        col = np.sort(col[~np.isnan(col)])
        values, counts = np.unique(col, return_counts=True)
        n = len(col)
        refs.append(
            _Reference(
                values=values,
                cdf=np.cumsum(counts) / n if n else np.empty(0),
                n=n,
                edges=np.asarray(feature.get("edges") or [], dtype=np.float64),
                expected=np.asarray(feature.get("proportions") or [1.0], dtype=np.float64),
                mean=feature.get("mean"),
            )
        )
    return refs


_ColumnStats = tuple[float, float, float, float | None, int]


def _column(col: np.ndarray, ref: _Reference, epsilon: float) -> _ColumnStats:
    """Return ``psi, D, p-value, mean, count`` of one current column."""
    s = np.sort(col)
    m = int(np.searchsorted(s, np.nan, side="left")) if s.dtype.kind == "f" else len(s)
    if m == 0:
        return float("nan"), float("nan"), float("nan"), None, 0
    s = s[:m]
    # Compare in the column's own precision: a mixed-dtype searchsorted would copy the column.
    edges = ref.edges.astype(s.dtype, copy=False)
    actual = bin_proportions(s, edges, m)
    e = np.maximum(ref.expected, epsilon)
    a = np.maximum(actual, epsilon)
    psi = float(np.sum((a - e) * np.log(a / e)))
    if ref.n == 0:
        return psi, float("nan"), float("nan"), float(s.mean(dtype=np.float64)), m
    u = ref.values.astype(s.dtype, copy=False)
    le = np.searchsorted(s, u, side="right") / m  # F_cur at each reference value
    lt = np.searchsorted(s, u, side="left") / m  # F_cur just before it
    before = np.concatenate(([0.0], ref.cdf[:-1]))  # F_ref just before each reference value
    d = float(max(np.max(np.abs(ref.cdf - le)), np.max(np.abs(before - lt))))
    en = ref.n * m / (ref.n + m)
    p = float(kolmogorov_sf(math.sqrt(en) * d)[0])
    return psi, d, p, float(s.mean(dtype=np.float64)), m


def compute_drift(
    baseline: dict[str, Any],
    current: Any,
    *,
    feature_names: Sequence[str] | None = None,
    psi_threshold: float | None = 0.2,
    ks_pvalue: float | None = 0.01,
    bonferroni: bool = True,
    min_drifted_features: int = 1,
    epsilon: float = PSI_EPSILON,
    workers: int | None = None,
) -> DriftResult:
    """Compare current data with a baseline profile, feature by feature.

    :param baseline: a profile from :func:`~airflow_mlops.monitoring.baseline.profile_dataset`.
    :param current: the current features, ``rows x features`` (float32 is used as is).
    :param feature_names: names of the current columns (default: positional ``f0 …``).
    :param psi_threshold: PSI at or above which a feature drifts; ``None`` ignores PSI.
    :param ks_pvalue: KS significance level; ``None`` ignores KS.
    :param bonferroni: divide ``ks_pvalue`` by the number of features.
    :param min_drifted_features: drifted features needed to call the dataset drifted.
    :param epsilon: floor of a bin's share in PSI.
    :param workers: threads sorting columns in parallel (NumPy releases the GIL while sorting);
        default: up to 4, bounded by the CPU count.
    """
    if psi_threshold is None and ks_pvalue is None:
        raise MonitoringError("at least one of psi_threshold and ks_pvalue must be set")
    names = baseline_feature_names(baseline)
    arr = np.asarray(current)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise MonitoringError(f"expected a 2-D feature matrix, got shape {arr.shape}")
    if arr.dtype.kind not in "f":
        arr = arr.astype(np.float64)
    arr = align_features(arr, feature_names, names)
    refs = _references(baseline)
    alpha = None
    if ks_pvalue is not None:
        alpha = ks_pvalue / len(names) if bonferroni and names else ks_pvalue

    def one(j: int) -> _ColumnStats:
        return _column(arr[:, j], refs[j], epsilon)

    n_workers = workers or min(4, os.cpu_count() or 1)
    if n_workers > 1 and arr.shape[0] >= 50_000 and len(names) > 1:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="drift") as pool:
            stats = list(pool.map(one, range(len(names))))
    else:
        stats = [one(j) for j in range(len(names))]
    features = []
    for name, ref, (psi, d, p, mean, count) in zip(names, refs, stats, strict=True):
        drifted = bool(
            count > 0
            and (
                (psi_threshold is not None and psi >= psi_threshold)
                or (alpha is not None and p == p and p < alpha)
            )
        )
        features.append(
            FeatureDrift(
                name=name,
                psi=psi,
                ks_statistic=d,
                ks_pvalue=p,
                baseline_mean=ref.mean,
                current_mean=mean,
                current_count=count,
                drifted=drifted,
            )
        )
    return DriftResult(
        features=features,
        rows=int(arr.shape[0]),
        baseline_rows=int(baseline.get("rows") or 0),
        psi_threshold=psi_threshold,
        ks_pvalue=ks_pvalue,
        ks_alpha=alpha,
        min_drifted_features=int(min_drifted_features),
    )
