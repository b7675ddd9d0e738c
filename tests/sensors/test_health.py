"""WaitHealthySensor against real local services: return, fail at once, defer, poke, execute_complete."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from airflow.sdk.bases.sensor import PokeReturnValue
from airflow.sdk.exceptions import TaskDeferred

from airflow_mlops.exceptions import DeploymentError, DeploymentFailed, HealthTimeout
from airflow_mlops.hooks.registry import folder_digest
from airflow_mlops.sensors.health import WaitHealthySensor
from airflow_mlops.targets.base import ModelRef, ServiceSpec
from airflow_mlops.targets.local import LocalTarget
from airflow_mlops.triggers.health import ServiceHealthTrigger

pytestmark = pytest.mark.timeout(300)

FAILING = 'def init():\n    raise RuntimeError("boom: sensor sees this")\n\n\ndef run(raw):\n    return raw\n'


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sensor-local")


@pytest.fixture(scope="module")
def model(digits_model_dir: Path) -> ModelRef:
    return ModelRef("digits", "1", str(digits_model_dir), folder_digest(digits_model_dir))


def sensor(home: Path, name: str, **kwargs) -> WaitHealthySensor:
    return WaitHealthySensor(
        task_id="wait", service_name=name, target_kwargs={"home": str(home)}, poke_interval=0.2, **kwargs
    )


def test_template_fields() -> None:
    assert set(WaitHealthySensor.template_fields) == {"service_name", "target", "target_kwargs"}


def test_defers_while_transitioning_then_returns_when_healthy(home: Path, model: ModelRef) -> None:
    target = LocalTarget(home)
    target.deploy(ServiceSpec(name="sens-ok", models=(model,)))
    try:
        task = sensor(home, "sens-ok", timeout=90)
        with pytest.raises(TaskDeferred) as deferred:
            task.execute({})  # just started: Transitioning
        trigger = deferred.value.trigger
        assert isinstance(trigger, ServiceHealthTrigger) and deferred.value.method_name == "execute_complete"
        assert trigger.service_name == "sens-ok" and trigger.target_kwargs == {"home": str(home)}
        assert trigger.deadline <= time.time() + 90 and deferred.value.timeout.total_seconds() > 90
        deadline = time.monotonic() + 60
        while target.status("sens-ok").state.value != "Healthy" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert task.execute({}) == {"service": "sens-ok", "target": "local", "state": "Healthy", "reason": ""}
        done = sensor(home, "sens-ok", deferrable=False).poke({})
        assert isinstance(done, PokeReturnValue) and done.is_done and done.xcom_value["state"] == "Healthy"
    finally:
        target.delete("sens-ok")


def test_fails_at_once_with_the_log_tail(home: Path, model: ModelRef, tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text(FAILING)
    target = LocalTarget(home)
    target.deploy(
        ServiceSpec(name="sens-bad", models=(model,), entry_script="score.py", source_dir=str(tmp_path))
    )
    try:
        deadline = time.monotonic() + 60
        while target.status("sens-bad").state.value != "Failed" and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(DeploymentFailed) as caught:
            sensor(home, "sens-bad").execute({})
        assert "boom: sensor sees this" in caught.value.log_tail and "boom: sensor sees this" in str(
            caught.value
        )
        with pytest.raises(DeploymentFailed):
            sensor(home, "sens-bad", deferrable=False).poke({})
    finally:
        target.delete("sens-bad")


def test_execute_complete_outcomes(home: Path) -> None:
    task = sensor(home, "svc", timeout=30)
    base = {"service": "svc", "target": "local", "reason": "", "log_tail": "", "message": "m"}
    assert task.execute_complete({}, {**base, "status": "success", "state": "Healthy"})["state"] == "Healthy"
    with pytest.raises(DeploymentFailed) as failed:
        task.execute_complete(
            {}, {**base, "status": "failed", "state": "Failed", "log_tail": "Traceback: boom"}
        )
    assert failed.value.log_tail == "Traceback: boom"
    with pytest.raises(HealthTimeout) as timeout:
        task.execute_complete({}, {**base, "status": "timeout", "state": "Unhealthy", "reason": "503"})
    assert timeout.value.state == "Unhealthy" and timeout.value.timeout == 30
    with pytest.raises(DeploymentError, match="no local service"):
        task.execute_complete({}, {**base, "status": "error", "state": None, "message": "no local service"})
    for bad in (None, {}, {"status": "weird"}, "success"):
        with pytest.raises(ValueError):
            task.execute_complete({}, bad)
