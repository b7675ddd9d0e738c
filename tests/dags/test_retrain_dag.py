"""The monitoring loop end to end through ``dag.test()`` on the local target.

A digits service runs with data collection on; drifted traffic goes in; ``mlops_retrain_on_drift``
collects it, finds drift, retrains, and updates the service in place (same URL, same key).
A deliberately poor retrain (gate off) is deployed, fails the smoke test, and is rolled back.
``mlops_collect`` emits its Asset event with the window in ``extra``.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlops_scoring.collector import Collector

from airflow_mlops.constants import mlops_home
from airflow_mlops.examples.digits import load_digits_split
from airflow_mlops.hooks.deployment import DeploymentHook
from airflow_mlops.hooks.registry import MlflowRegistryHook
from airflow_mlops.monitoring.baseline import profile_dataset
from airflow_mlops.monitoring.collected import CollectedDataReader, read_dataset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


def _dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "mlops_retrain_on_drift.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["mlops_collect"], bag.dags["mlops_retrain_on_drift"]


def test_dags_parse_with_documented_params() -> None:
    collect, retrain = _dags()
    assert [o.uri for o in collect.get_task("collect").outlets] == ["mlops://collected/digits-svc"]
    assert {t.task_id for t in retrain.tasks} == {
        "inputs",
        "drift",
        "retrain",
        "choose_path",
        "build_image",
        "update",
        "wait_healthy",
        "smoke_test",
        "rollback",
        "outcome",
    }
    assert retrain.get_task("rollback").trigger_rule == "one_failed"
    assert retrain.get_task("drift").mode == "reschedule"
    for name, param in retrain.params.items():
        assert param.description, f"param {name} has no description"


def test_collect_dag_emits_the_asset_event(airflow_home: Path) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    collect, _ = _dags()
    hour = datetime(2024, 7, 1, 10, tzinfo=UTC)
    collector = Collector(service="digits-svc", sink=str(Path(mlops_home()) / "collected"), flush_seconds=0.1)
    collector.start()
    for minutes in range(-50, 120, 10):
        collector.collect(
            {
                "request_id": str(minutes),
                "ts": (hour + timedelta(minutes=minutes)).timestamp(),
                "model": "digits",
                "version": "1",
                "inputs": {"data": [[float(minutes)] * 64]},
                "outputs": {"label": [1]},
            }
        )
    collector.close(10)
    run = collect.test(logical_date=hour)
    assert run.state == "success"
    with create_session() as session:
        event = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == "mlops://collected/digits-svc", AssetEvent.source_run_id == run.run_id)
            .one()
        )
        extra = dict(event.extra)
    start, end = datetime.fromisoformat(extra["window_start"]), datetime.fromisoformat(extra["window_end"])
    assert end - start == timedelta(hours=1)
    data = read_dataset(extra["path"])
    assert data.rows == extra["rows"] == 5  # a manual run reads the hour before its logical date
    assert all(start <= datetime.fromisoformat(t) < end for t in data.ts)


def _score(info, key: str, rows: list[list[float]]) -> list[int]:
    response = httpx.post(
        info.scoring_uri, json={"data": rows}, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    response.raise_for_status()
    return response.json()["label"]


def test_drift_retrain_update_and_rollback(airflow_home: Path, digits_model_dir: Path) -> None:
    _, retrain = _dags()
    service = f"drift-{uuid.uuid4().hex[:6]}"
    model = f"digits-loop-{uuid.uuid4().hex[:6]}"
    x_train, x_test, _, y_test = load_digits_split()
    registry = MlflowRegistryHook()
    registry.register_model(model, digits_model_dir, baseline=profile_dataset(x_train))
    hook = DeploymentHook("local")
    try:
        hook.deploy_service(
            service, [f"{model}:1"], config={"collect_model_data": True, "sampling_rate": 1.0}
        )
        hook.wait_until_healthy(service, timeout=120, poll_interval=1)
        before = hook.get_service(service)
        key = hook.get_keys(service).primary_key

        drifted = (0.5 * x_train[:300] + 6.0).tolist()
        for i in range(0, len(drifted), 50):
            _score(before, key, drifted[i : i + 50])
        reader = CollectedDataReader()
        now = datetime.now(UTC)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            records = list(reader.iter_records(service, now - timedelta(hours=1), now + timedelta(minutes=5)))
            if len(records) == 6:
                break
            time.sleep(0.5)
        assert len(records) == 6, "the service did not collect the drifted requests"

        run = retrain.test(run_conf={"service_name": service, "model_name": model, "target": "local"})
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == "success", states
        assert states["rollback"] == "skipped" and states["build_image"] == "skipped"
        after = hook.get_service(service)
        assert after.url == before.url and [m["version"] for m in after.models] == ["2"]
        assert hook.get_keys(service).primary_key == key
        labels = _score(after, key, (0.5 * x_test[:100] + 6.0).tolist())
        assert np.mean(np.array(labels) == y_test[:100]) > 0.8  # the new version reads the drifted digits
        assert registry.get_model_version(model, 2)["tags"]["mlops.parent_version"] == "1"

        bad = retrain.test(
            run_conf={
                "service_name": service,
                "model_name": model,
                "target": "local",
                "trainer": "airflow_mlops.monitoring.digits:train_poor_digits",
                "min_improvement": None,
                "psi_threshold": 0.0,  # judge the same window as drifted again
            }
        )
        states = {ti.task_id: ti.state for ti in bad.get_task_instances()}
        assert bad.state == "failed", states
        assert states["smoke_test"] == "failed" and states["rollback"] == "success", states
        assert states["outcome"] == "failed"
        final = hook.get_service(service)
        assert final.url == before.url and [m["version"] for m in final.models] == ["2"]
        assert hook.get_keys(service).primary_key == key
        assert np.mean(np.array(_score(final, key, x_test[:100].tolist())) == y_test[:100]) > 0.8
        assert registry.get_model_version(model, 3)["tags"]["mlops.parent_version"] == "2"
    finally:
        hook.delete_service(service, missing_ok=True)
