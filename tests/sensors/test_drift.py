"""DriftSensor outcomes against a real embedded MLflow registry holding a digits baseline.

The context is a small stand-in holding ``ti.xcom_push`` and the reschedule-date lookup
(what ``BaseSensorOperator.execute`` uses); a full run is in tests/dags/test_retrain_dag.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowRescheduleException, AirflowSkipException

from airflow_mlops.examples.digits import load_digits_split
from airflow_mlops.exceptions import ConfigError, MonitoringError
from airflow_mlops.hooks.registry import MlflowRegistryHook
from airflow_mlops.monitoring.baseline import profile_dataset
from airflow_mlops.monitoring.collected import CollectedData, write_dataset
from airflow_mlops.sensors.drift import DriftSensor


class _TaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def get_first_reschedule_date(self, context: Any) -> None:
        return None


@pytest.fixture(scope="module")
def model(digits_model_dir: Path) -> str:
    name = f"digits-drift-{uuid.uuid4().hex[:6]}"
    x_train, _, _, _ = load_digits_split()
    registry = MlflowRegistryHook()
    registry.register_model(name, digits_model_dir, baseline=profile_dataset(x_train))
    registry.register_model(name, digits_model_dir)  # version 2: no baseline
    return name


def _dataset(tmp_path: Path, x: np.ndarray) -> str:
    data = CollectedData(
        features=x.astype(np.float64),
        feature_names=[f"f{i}" for i in range(x.shape[1])],
        request_id=[str(i) for i in range(len(x))],
        ts=["2024-06-01T08:00:00+00:00"] * len(x),
        model=["digits"] * len(x),
        version=["1"] * len(x),
        outputs=["0"] * len(x),
    )
    return write_dataset(data, tmp_path / "ds.parquet")


def _run(sensor: DriftSensor) -> tuple[Any, _TaskInstance]:
    ti = _TaskInstance()
    return sensor.execute({"ti": ti}), ti


def test_template_fields_mode_and_checks(model: str) -> None:
    sensor = DriftSensor(task_id="d", model_name=model, dataset_path="x.parquet")
    assert sensor.mode == "reschedule"
    assert set(sensor.template_fields) >= {"model_name", "model_version", "dataset_path", "psi_threshold"}
    with pytest.raises(ConfigError):
        DriftSensor(task_id="d2", model_name=model)


def test_drift_succeeds_with_the_table_in_xcom(model: str, tmp_path: Path) -> None:
    _, x_test, _, _ = load_digits_split()
    drifted = 0.5 * x_test + 6.0  # faded ink on a brighter background
    sensor = DriftSensor(
        task_id="d", model_name=model, model_version="1", dataset_path=_dataset(tmp_path, drifted)
    )
    report, ti = _run(sensor)
    assert report["drifted"] is True and report["model_version"] == "1"
    assert len(report["table"]) == 64 and len(report["drifted_features"]) > 20
    assert {"name", "psi", "ks_statistic", "ks_pvalue", "drifted"} <= set(report["table"][0])
    assert ti.pushed["drift_report"] == report


def test_no_drift_on_a_fixed_dataset_skips(model: str, tmp_path: Path) -> None:
    _, x_test, _, _ = load_digits_split()
    sensor = DriftSensor(
        task_id="d", model_name=model, model_version="1", dataset_path=_dataset(tmp_path, x_test)
    )
    ti = _TaskInstance()
    with pytest.raises(AirflowSkipException, match="no drift"):
        sensor.execute({"ti": ti})
    assert ti.pushed["drift_report"]["drifted"] is False


def test_live_window_without_data_reschedules_then_soft_fails(model: str, tmp_path: Path) -> None:
    live = dict(
        task_id="d", model_name=model, model_version="1", service_name="quiet-svc", sink=str(tmp_path)
    )
    with pytest.raises(AirflowRescheduleException):
        _run(DriftSensor(**live))
    with pytest.raises(AirflowSkipException, match="timed out"):
        _run(DriftSensor(**live, timeout=0, soft_fail=True))


def test_a_version_without_baseline_fails(model: str, tmp_path: Path) -> None:
    _, x_test, _, _ = load_digits_split()
    sensor = DriftSensor(
        task_id="d", model_name=model, model_version="2", dataset_path=_dataset(tmp_path, x_test)
    )
    with pytest.raises(MonitoringError, match="no baseline"):
        _run(sensor)
