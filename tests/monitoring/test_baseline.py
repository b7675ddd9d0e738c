"""Baseline profiles: summary statistics, quantile bins, the row sample, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from airflow_mlops.exceptions import MonitoringError
from airflow_mlops.monitoring.baseline import (
    baseline_feature_names,
    baseline_sample,
    profile_dataset,
)


def test_profile_summarises_each_feature_and_survives_json() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(5, 2, 5000), rng.uniform(0, 1, 5000), np.zeros(5000)])
    x[0, 1] = np.nan
    profile = json.loads(json.dumps(profile_dataset(x, ["a", "b", "zero"], sample_size=200, bins=10)))

    assert profile["rows"] == 5000 and baseline_feature_names(profile) == ["a", "b", "zero"]
    a, b, zero = profile["features"]
    assert a["mean"] == pytest.approx(5, abs=0.1) and a["std"] == pytest.approx(2, abs=0.1)
    assert len(a["edges"]) == 9 and a["edges"] == sorted(a["edges"])
    assert sum(a["proportions"]) == pytest.approx(1.0)
    assert all(p == pytest.approx(0.1, abs=0.01) for p in a["proportions"])
    assert b["missing"] == 1 and b["count"] == 4999
    # A point mass collapses the bins: one bin holds everything.
    assert zero["edges"] == [] and zero["proportions"] == [1.0]

    sample = baseline_sample(profile)
    assert sample.shape == (200, 3)
    rows = {tuple(r) for r in np.nan_to_num(x, nan=-1).tolist()}
    assert all(tuple(r) in rows for r in np.nan_to_num(sample, nan=-1).tolist())


def test_profile_is_reproducible_and_small_data_keeps_every_row() -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    assert profile_dataset(x) == profile_dataset(x)
    assert baseline_sample(profile_dataset(x)).tolist() == x.tolist()
    assert baseline_feature_names(profile_dataset(x)) == ["f0", "f1", "f2"]


def test_profile_refuses_bad_input() -> None:
    with pytest.raises(MonitoringError, match="empty"):
        profile_dataset(np.empty((0, 3)))
    with pytest.raises(MonitoringError, match="names"):
        profile_dataset(np.ones((4, 2)), ["only-one"])
    with pytest.raises(MonitoringError, match="baseline"):
        baseline_sample({"features": []})
