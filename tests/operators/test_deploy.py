"""Deploy / update / delete operators with the embedded MLflow registry and real local services.

The task context is a small stand-in holding only ``ti.xcom_push`` (the operators use nothing
else); the whole path through Airflow runs in tests/dags/test_deploy_dag.py.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_mlops.exceptions import ConfigError, DeploymentError, DeploymentNotFound
from airflow_mlops.hooks.deployment import DeploymentHook
from airflow_mlops.hooks.registry import MlflowRegistryHook
from airflow_mlops.operators.deploy import (
    DeleteServiceOperator,
    DeployServiceOperator,
    ScoringServiceLink,
    UpdateServiceOperator,
)

pytestmark = pytest.mark.timeout(300)


class _TaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture(scope="module")
def model_name(digits_model_dir: Path) -> str:
    name = f"digits-op-{uuid.uuid4().hex[:6]}"
    registry = MlflowRegistryHook()
    registry.register_model(name, digits_model_dir)
    registry.register_model(name, digits_model_dir)
    return name


@pytest.fixture
def target_kwargs(tmp_path: Path) -> dict[str, Any]:
    return {"home": str(tmp_path / "local")}


def test_template_fields_and_argument_checks() -> None:
    assert set(DeployServiceOperator.template_fields) >= {
        "service_name",
        "models",
        "config",
        "image",
        "manifest_hash",
        "entry_script",
        "source_dir",
        "target",
    }
    assert set(DeleteServiceOperator.template_fields) == {"service_name", "target"}
    with pytest.raises(ConfigError, match="mode"):
        DeployServiceOperator(task_id="d", service_name="s", models=["m:1"], mode="replace")
    assert UpdateServiceOperator(task_id="u", service_name="s").mode == "update"
    assert [link.name for link in DeployServiceOperator.operator_extra_links] == ["Scoring service"]


def test_deploy_create_or_update_delete(
    model_name: str,
    target_kwargs: dict[str, Any],
    digits_rows: list[list[float]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    ti = _TaskInstance()
    deploy = DeployServiceOperator(
        task_id="deploy",
        service_name="op-svc",
        models=[f"{model_name}:1"],
        config={"max_concurrent_requests": 2},
        mode="create_or_update",
        target_kwargs=target_kwargs,
    )
    hook = DeploymentHook("local", target_kwargs=target_kwargs)
    try:
        first = deploy.execute({"ti": ti})
        assert first["name"] == "op-svc" and first["scoring_uri"] == first["url"] + "/score"
        assert first["models"][0]["version"] == "1"
        assert ti.pushed[ScoringServiceLink().xcom_key] == first["url"]
        hook.wait_until_healthy("op-svc", timeout=60, poll_interval=0.2)

        deploy.models = [f"{model_name}:2"]
        second = deploy.execute({"ti": ti})  # exists now: updated in place
        assert second["url"] == first["url"] and second["models"][0]["version"] == "2"

        keys = hook.get_keys("op-svc")
        exposed = json.dumps([first, second, ti.pushed]) + caplog.text
        assert keys.primary_key not in exposed and keys.secondary_key not in exposed
        headers = {"Authorization": f"Bearer {keys.primary_key}"}
        assert (
            httpx.post(second["scoring_uri"], json={"data": digits_rows[:1]}, headers=headers).status_code
            == 200
        )

        with pytest.raises(DeploymentError, match="already exists"):
            DeployServiceOperator(
                task_id="again", service_name="op-svc", models=[model_name], target_kwargs=target_kwargs
            ).execute({"ti": ti})
        kept = UpdateServiceOperator(task_id="u", service_name="op-svc", target_kwargs=target_kwargs)
        assert kept.execute({"ti": ti})["models"][0]["version"] == "2"  # nothing given: models kept
    finally:
        result = DeleteServiceOperator(
            task_id="delete", service_name="op-svc", target_kwargs=target_kwargs
        ).execute({})
    assert result == {"service": "op-svc", "target": "local", "deleted": True}
    assert DeleteServiceOperator(task_id="d", service_name="op-svc", target_kwargs=target_kwargs).execute(
        {}
    ) == {
        "service": "op-svc",
        "target": "local",
        "deleted": False,
    }
    with pytest.raises(DeploymentNotFound):
        DeleteServiceOperator(
            task_id="d", service_name="op-svc", missing_ok=False, target_kwargs=target_kwargs
        ).execute({})
    assert MlflowRegistryHook().users(model_name, 2) == []


def test_on_kill_removes_the_service_it_was_creating(model_name: str, target_kwargs: dict[str, Any]) -> None:
    deploy = DeployServiceOperator(
        task_id="deploy", service_name="op-killed", models=[model_name], target_kwargs=target_kwargs
    )
    hook = DeploymentHook("local", target_kwargs=target_kwargs)
    hook.deploy_service("op-killed", [model_name])  # as if execute was interrupted mid-way
    deploy._created = "op-killed"
    deploy.on_kill()
    assert not hook.service_exists("op-killed")
    assert MlflowRegistryHook().users(model_name, 2) == []
    deploy.on_kill()  # nothing left: no error
