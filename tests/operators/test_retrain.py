"""RetrainOperator against the real embedded MLflow registry: lineage, baseline, MLflow run, gate."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_mlops.examples.digits import load_digits_split
from airflow_mlops.exceptions import ConfigError, MonitoringError
from airflow_mlops.hooks.registry import MlflowRegistryHook
from airflow_mlops.monitoring.baseline import profile_dataset
from airflow_mlops.monitoring.collected import CollectedData, write_dataset
from airflow_mlops.operators.retrain import RetrainOperator

pytestmark = pytest.mark.timeout(300)

DRIFT = {
    "drifted": True,
    "drifted_features": ["f10", "f20"],
    "max_psi": 1.5,
    "max_ks_statistic": 0.6,
    "table": [{"name": "f10", "psi": 1.5, "drifted": True}, {"name": "f11", "psi": 0.01, "drifted": False}],
}


class _TaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture
def model(digits_model_dir: Path) -> str:
    name = f"digits-retrain-{uuid.uuid4().hex[:6]}"
    x_train, _, _, _ = load_digits_split()
    MlflowRegistryHook().register_model(name, digits_model_dir, baseline=profile_dataset(x_train))
    return name


@pytest.fixture(scope="module")
def drifted_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    x_train, _, _, _ = load_digits_split()
    x = (0.5 * x_train[:400] + 6.0).astype(np.float64)
    data = CollectedData(
        features=x,
        feature_names=[f"f{i}" for i in range(64)],
        request_id=[str(i) for i in range(len(x))],
        ts=["2024-06-01T08:00:00+00:00"] * len(x),
        model=["digits"] * len(x),
        version=["1"] * len(x),
        outputs=["0"] * len(x),
    )
    out = tmp_path_factory.mktemp("retrain") / "ds.parquet"
    meta = {
        "mlops.window_start": "2024-06-01T08:00:00+00:00",
        "mlops.window_end": "2024-06-01T09:00:00+00:00",
    }
    return write_dataset(data, out, metadata=meta)


def test_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        RetrainOperator(task_id="r", model_name="m", dataset_path="d")
    with pytest.raises(ConfigError, match="on_rejected"):
        RetrainOperator(task_id="r", model_name="m", dataset_path="d", train_script="t.py", on_rejected="x")
    assert {"dataset_path", "parent_version", "drift", "min_improvement"} <= set(
        RetrainOperator.template_fields
    )


def test_a_better_model_is_registered_with_lineage_and_a_new_baseline(
    model: str, drifted_dataset: str
) -> None:
    op = RetrainOperator(
        task_id="retrain",
        model_name=model,
        dataset_path=drifted_dataset,
        parent_version="1",
        train_callable="airflow_mlops.monitoring.digits:retrain_digits",
        drift=DRIFT,
        train_params={"max_iter": 150},
    )
    result = op.execute({"ti": _TaskInstance()})
    assert result["promoted"] is True and result["version"] == "2" and result["uri"] == f"models:/{model}/2"
    assert result["metrics"]["accuracy"] > result["parent_metrics"]["accuracy"]

    registry = MlflowRegistryHook()
    tags = registry.get_model_version(model, 2)["tags"]
    assert tags["mlops.parent_version"] == "1"
    assert tags["mlops.window_start"] == "2024-06-01T08:00:00+00:00"
    assert tags["mlops.window_end"] == "2024-06-01T09:00:00+00:00"
    assert tags["mlops.dataset"] == drifted_dataset
    assert tags["mlops.drift.features"] == "f10,f20" and tags["mlops.drift.max_psi"] == "1.5"
    assert json.loads(tags["mlops.drift.psi"]) == {"f10": 1.5}
    assert float(tags["mlops.metric.accuracy"]) == pytest.approx(result["metrics"]["accuracy"])
    baseline = registry.get_baseline(model, 2)
    assert baseline is not None and baseline["rows"] == 2 * 1347  # original + mapped training images

    run = registry.client.get_run(result["run_id"])
    assert run.data.metrics["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert "parent_accuracy" in run.data.metrics and run.data.params["parent_version"] == "1"
    assert run.data.params["train.max_iter"] == "150" and run.data.tags["mlops.promoted"] == "true"
    assert tags["mlops.training_run"] == result["run_id"]


def test_a_worse_model_is_not_promoted(model: str, drifted_dataset: str) -> None:
    common = dict(
        task_id="retrain",
        model_name=model,
        dataset_path=drifted_dataset,
        parent_version="latest",
        train_callable="airflow_mlops.monitoring.digits:train_poor_digits",
    )
    ti = _TaskInstance()
    with pytest.raises(AirflowSkipException, match="not promoted"):
        RetrainOperator(**common).execute({"ti": ti})
    rejected = ti.pushed["retrain"]
    assert rejected["promoted"] is False and rejected["version"] is None
    assert rejected["metrics"]["accuracy"] < rejected["parent_metrics"]["accuracy"]
    registry = MlflowRegistryHook()
    assert [v["version"] for v in registry.search_model_versions(name=model)] == ["1"]
    assert registry.client.get_run(rejected["run_id"]).data.tags["mlops.promoted"] == "false"

    with pytest.raises(MonitoringError, match="not promoted"):
        RetrainOperator(**common, on_rejected="fail").execute({"ti": _TaskInstance()})
    returned = RetrainOperator(**common, on_rejected="return").execute({"ti": _TaskInstance()})
    assert returned["promoted"] is False
    # With the gate off, the same model is registered.
    forced = RetrainOperator(**common, min_improvement=None).execute({"ti": _TaskInstance()})
    assert forced["promoted"] is True and forced["version"] == "2"


def test_a_training_script(model: str, drifted_dataset: str, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import argparse, json, shutil, pathlib
            import numpy as np
            p = argparse.ArgumentParser()
            p.add_argument("--data"); p.add_argument("--model-dir"); p.add_argument("--result")
            a = p.parse_args()
            data = pathlib.Path(a.data)
            ctx = json.loads((data / "context.json").read_text())
            assert np.load(data / "baseline.npy").shape == (1000, 64)
            shutil.copy(data / "parent" / "model.onnx", pathlib.Path(a.model_dir) / "model.onnx")
            json.dump({"metrics": {"accuracy": 0.9}, "parent_metrics": {"accuracy": 0.8},
                       "params": {"parent": ctx["parent_version"]}}, open(a.result, "w"))
            print("trained")
            """
        )
    )
    result = RetrainOperator(
        task_id="retrain", model_name=model, dataset_path=drifted_dataset, train_script=str(script)
    ).execute({"ti": _TaskInstance()})
    assert result["promoted"] is True and result["version"] == "2"
    run = MlflowRegistryHook().client.get_run(result["run_id"])
    assert run.data.params["train.parent"] == "1"
