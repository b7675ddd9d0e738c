"""Drift statistics against known distributions, and against SciPy on small inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import kolmogorov
from scipy.stats import ks_2samp

from airflow_mlops.exceptions import MonitoringError
from airflow_mlops.monitoring.baseline import baseline_sample, profile_dataset
from airflow_mlops.monitoring.drift import compute_drift, kolmogorov_sf


@pytest.fixture(scope="module")
def baseline() -> dict:
    rng = np.random.default_rng(7)
    return profile_dataset(rng.normal(0.0, 1.0, size=(20_000, 8)), sample_size=1000)


def test_same_distribution_is_not_flagged(baseline: dict) -> None:
    current = np.random.default_rng(8).normal(0.0, 1.0, size=(5000, 8))
    result = compute_drift(baseline, current)
    assert not result.drifted and result.drifted_features == []
    assert result.max_psi < 0.05
    assert all(f.ks_pvalue > 0.001 for f in result.features)


def test_shifted_mean_and_changed_variance_flag_exactly_those_features(baseline: dict) -> None:
    current = np.random.default_rng(9).normal(0.0, 1.0, size=(5000, 8))
    current[:, 2] += 0.5  # shifted mean
    current[:, 5] *= 2.0  # changed variance, same mean
    result = compute_drift(baseline, current)
    assert result.drifted and result.drifted_features == ["f2", "f5"]
    f2, f5 = result.features[2], result.features[5]
    assert f2.psi > 0.2 and f5.psi > 0.2 and f2.ks_pvalue < 1e-10 and f5.ks_pvalue < 1e-10
    assert f2.current_mean == pytest.approx(0.5, abs=0.05)
    table = result.to_table()
    assert table.splitlines()[2].startswith(("f2", "f5")) and "DRIFT: 2 of 8" in table
    rows = result.to_rows()
    assert [r["feature"] if "feature" in r else r["name"] for r in rows][:3] == ["f0", "f1", "f2"]
    assert rows[2]["drifted"] is True and rows[0]["drifted"] is False


def test_each_threshold_can_be_used_alone(baseline: dict) -> None:
    current = np.random.default_rng(10).normal(0.0, 1.0, size=(200_000, 8))
    current[:, 1] += 0.25  # a small shift: KS sees it, PSI stays under 0.2
    assert compute_drift(baseline, current, psi_threshold=None).drifted_features == ["f1"]
    assert compute_drift(baseline, current, ks_pvalue=None).drifted_features == []
    with pytest.raises(MonitoringError):
        compute_drift(baseline, current, psi_threshold=None, ks_pvalue=None)


def test_ks_matches_scipy_and_psi_matches_its_formula() -> None:
    rng = np.random.default_rng(3)
    base = np.column_stack([rng.normal(size=300), rng.integers(0, 5, 300), rng.exponential(size=300)])
    cur = np.column_stack([rng.normal(0.3, 1, 120), rng.integers(0, 6, 120), rng.exponential(2, 120)])
    profile = profile_dataset(base, sample_size=300, bins=5)
    result = compute_drift(profile, cur)
    ref = baseline_sample(profile)
    for j, feature in enumerate(result.features):
        expected = ks_2samp(ref[:, j], cur[:, j], method="asymp")
        assert feature.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
        en = 300 * 120 / 420
        assert feature.ks_pvalue == pytest.approx(kolmogorov(np.sqrt(en) * expected.statistic), rel=1e-9)
        # SciPy's "asymp" adds a finite-sample correction; the limit law is close to it.
        assert feature.ks_pvalue == pytest.approx(expected.pvalue, abs=0.05)

        spec = profile["features"][j]
        edges = np.array(spec["edges"])
        counts = np.bincount(np.searchsorted(edges, cur[:, j], side="left"), minlength=len(edges) + 1)
        a = np.maximum(counts / len(cur), 1e-4)
        e = np.maximum(np.array(spec["proportions"]), 1e-4)
        assert feature.psi == pytest.approx(float(np.sum((a - e) * np.log(a / e))), rel=1e-9)


def test_kolmogorov_sf_matches_scipy() -> None:
    x = np.array([0.0, 0.05, 0.3, 0.8, 0.99, 1.0, 1.36, 2.5, 8.0])
    assert np.allclose(kolmogorov_sf(x), kolmogorov(x), atol=1e-12)


def test_columns_are_matched_by_name_and_nan_is_ignored() -> None:
    rng = np.random.default_rng(4)
    profile = profile_dataset(rng.normal(size=(2000, 2)), ["height", "weight"])
    current = np.column_stack([rng.normal(3, 1, 500), rng.normal(size=500)])  # weight, height
    current[:10, 1] = np.nan
    result = compute_drift(profile, current, feature_names=["weight", "height"])
    assert result.drifted_features == ["weight"]
    assert result.features[0].current_count == 490
    with pytest.raises(MonitoringError, match="do not match"):
        compute_drift(profile, current, feature_names=["a", "b"])


def test_float32_input_and_threads_give_the_same_answer(baseline: dict) -> None:
    current = np.random.default_rng(11).normal(0.2, 1.0, size=(60_000, 8))
    one = compute_drift(baseline, current, workers=1)
    many = compute_drift(baseline, current.astype(np.float32), workers=4)
    assert one.drifted_features == many.drifted_features
    for a, b in zip(one.features, many.features, strict=True):
        assert a.ks_statistic == pytest.approx(b.ks_statistic, abs=1e-4)
        assert a.psi == pytest.approx(b.psi, rel=1e-3, abs=1e-6)
