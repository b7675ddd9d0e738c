"""The ``mlops_deploy`` example DAG end to end through ``dag.test()`` with ``target="docker"``.

train -> register -> build_image (a real image from the local base) -> deploy (a container
behind the HAProxy gateway) -> wait_healthy -> smoke_score; then a second run updates the
service in place: same URL, same keys, the new model version answering ``GET /version``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from airflow_mlops.hooks.deployment import DeploymentHook
from airflow_mlops.hooks.registry import MlflowRegistryHook

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def docker_settings(monkeypatch: pytest.MonkeyPatch, docker_engine: None) -> None:
    monkeypatch.setenv("MLOPS_BASE_IMAGE", os.environ.get("MLOPS_BASE_IMAGE", "airflow-mlops/base:bookworm"))
    monkeypatch.setenv(
        "MLOPS_GATEWAY_IMAGE", os.environ.get("MLOPS_GATEWAY_IMAGE", "airflow-mlops/haproxy:bookworm")
    )


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "mlops_deploy.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["mlops_deploy"]


def _xcom(run_id: str, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(XComModel.dag_id == "mlops_deploy", XComModel.run_id == run_id)
            .filter(XComModel.task_id == task_id, XComModel.key == "return_value")
            .one()
        )
        return row.value if not isinstance(row.value, str) else json.loads(row.value)


def test_docker_run_builds_deploys_and_updates_in_place(
    airflow_home: Path, docker_settings: None, digits_rows, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    service = f"dagd-{uuid.uuid4().hex[:6]}"
    model = f"digits-dagd-{uuid.uuid4().hex[:6]}"
    hook = DeploymentHook("docker")
    dag = _dag()
    conf = {"service_name": service, "model_name": model, "target": "docker", "max_iter": 50}
    images: list[str] = []
    try:
        run = dag.test(run_conf=conf)
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == "success", states
        assert all(state == "success" for state in states.values()), states
        built = _xcom(run.run_id, "build_image")
        images.append(built["image"])
        assert built["reused"] is False and built["models"][0]["version"] == "1"

        info = hook.get_service(service)
        assert info.target == "docker" and info.state.value == "Healthy"
        assert info.image == built["image"] and info.manifest_hash == built["manifest_hash"]
        keys = hook.get_keys(service)
        ok = httpx.post(
            info.scoring_uri,
            json={"data": digits_rows[:2]},
            headers={"Authorization": f"Bearer {keys.primary_key}"},
        )
        assert ok.status_code == 200 and len(ok.json()["label"]) == 2
        assert f"image:{built['image']}" in MlflowRegistryHook().users(model, 1)

        # A second run registers version 2, builds its image and updates the service in place.
        run2 = dag.test(run_conf={**conf, "hidden_units": 16})
        assert run2.state == "success"
        built2 = _xcom(run2.run_id, "build_image")
        images.append(built2["image"])
        after = hook.get_service(service)
        assert after.url == info.url and hook.get_keys(service) == keys
        doc = httpx.get(f"{info.url}/version", headers={"Authorization": f"Bearer {keys.primary_key}"}).json()
        assert [m["version"] for m in doc["models"]] == ["2"]
        assert doc["manifest_hash"] == built2["manifest_hash"]
        assert keys.primary_key not in caplog.text
    finally:
        hook.delete_service(service, missing_ok=True)
        for image in images:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    assert not hook.service_exists(service)
