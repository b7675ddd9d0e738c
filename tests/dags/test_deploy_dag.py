"""The ``mlops_deploy`` example DAG end to end through ``dag.test()`` on the local target."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import httpx
import pytest

from airflow_mlops.hooks.deployment import DeploymentHook
from airflow_mlops.hooks.registry import MlflowRegistryHook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "mlops_deploy.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["mlops_deploy"]


def test_dag_parses_with_documented_params() -> None:
    dag = _dag()
    assert {t.task_id for t in dag.tasks} == {
        "train",
        "register",
        "choose_path",
        "build_image",
        "deploy",
        "wait_healthy",
        "smoke_score",
    }
    for name, param in dag.params.items():
        assert param.description, f"param {name} has no description"
    assert dag.params["target"] == "local" and dag.params["port"] is None
    assert dag.get_task("deploy").trigger_rule == "none_failed_min_one_success"


def _xcoms(run_id: str) -> dict[str, object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == "mlops_deploy", XComModel.run_id == run_id)
        return {f"{row.task_id}.{row.key}": row.value for row in rows}


def test_local_run_deploys_a_service_that_predicts(
    airflow_home: Path, digits_rows: list[list[float]], caplog: pytest.LogCaptureFixture, capfd
) -> None:
    caplog.set_level(logging.INFO)
    service = f"dag-{uuid.uuid4().hex[:6]}"
    model = f"digits-dag-{uuid.uuid4().hex[:6]}"
    hook = DeploymentHook("local")
    dag = _dag()
    try:
        run = dag.test(
            run_conf={"service_name": service, "model_name": model, "target": "local", "max_iter": 50}
        )
        assert run.state == "success"
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert states["build_image"] == "skipped"
        assert all(states[t] == "success" for t in states if t != "build_image"), states

        info = hook.get_service(service)
        assert info.state.value == "Healthy"
        assert info.models[0]["name"] == model and info.models[0]["version"] == "1"
        keys = hook.get_keys(service)
        response = httpx.post(
            info.scoring_uri,
            json={"data": digits_rows[:2]},
            headers={"Authorization": f"Bearer {keys.primary_key}"},
        )
        assert response.status_code == 200 and len(response.json()["label"]) == 2
        assert httpx.post(info.scoring_uri, json={"data": digits_rows[:2]}).status_code == 401

        version = MlflowRegistryHook().get_model_version(model, 1)
        assert version["tags"]["run_id"] == run.run_id and float(version["tags"]["accuracy"]) > 0.5

        xcoms = _xcoms(run.run_id)
        assert any(key.startswith("smoke_score.") for key in xcoms)
        exposed = json.dumps(xcoms, default=str) + caplog.text + "".join(capfd.readouterr())
        assert info.url in exposed
        assert keys.primary_key not in exposed and keys.secondary_key not in exposed
    finally:
        hook.delete_service(service, missing_ok=True)
    assert not hook.service_exists(service)
    assert MlflowRegistryHook().users(model, 1) == []
