"""ServiceHealthTrigger: serialize round trip, and each event from ``run()`` against real local services."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_mlops.hooks.registry import folder_digest
from airflow_mlops.targets.base import ModelRef, ServiceSpec
from airflow_mlops.targets.local import LocalTarget
from airflow_mlops.triggers.health import ServiceHealthTrigger

pytestmark = pytest.mark.timeout(300)

FAILING = 'def init():\n    raise RuntimeError("boom: bad weights")\n\n\ndef run(raw):\n    return raw\n'
SLOW = "import time\n\n\ndef init():\n    time.sleep(120)\n\n\ndef run(raw):\n    return raw\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trigger-local")


@pytest.fixture(scope="module")
def model(digits_model_dir: Path) -> ModelRef:
    return ModelRef("digits", "1", str(digits_model_dir), folder_digest(digits_model_dir))


def deploy(home: Path, name: str, model: ModelRef, tmp_path: Path, script: str | None = None) -> LocalTarget:
    target = LocalTarget(home, stop_timeout=5)
    kwargs: dict[str, Any] = {}
    if script:
        (tmp_path / "score.py").write_text(script)
        kwargs = {"entry_script": "score.py", "source_dir": str(tmp_path)}
    target.deploy(ServiceSpec(name=name, models=(model,), **kwargs))
    return target


def first_event(trigger: ServiceHealthTrigger) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger yielded nothing")

    return asyncio.run(run())


def make(home: Path, name: str, seconds: float, poll: float = 0.2) -> ServiceHealthTrigger:
    return ServiceHealthTrigger(
        service_name=name,
        target="local",
        target_kwargs={"home": str(home), "stop_timeout": 5},
        poll_interval=poll,
        deadline=time.time() + seconds,
    )


def test_serialize_round_trip(home: Path) -> None:
    trigger = make(home, "svc", 30, poll=1.5)
    path, kwargs = trigger.serialize()
    module, _, cls = path.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), cls)(**kwargs)
    assert isinstance(rebuilt, ServiceHealthTrigger)
    assert rebuilt.serialize() == (path, kwargs)
    assert (
        kwargs["target_kwargs"] == {"home": str(home), "stop_timeout": 5} and kwargs["poll_interval"] == 1.5
    )
    json.dumps(kwargs)  # JSON-able, as the triggerer stores it


def test_success_when_the_service_gets_ready(home: Path, model: ModelRef, tmp_path: Path) -> None:
    target = deploy(home, "trig-ok", model, tmp_path)
    try:
        event = first_event(make(home, "trig-ok", 60))
    finally:
        target.delete("trig-ok")
    assert event["status"] == "success" and event["state"] == "Healthy" and event["service"] == "trig-ok"


def test_failed_carries_the_log_tail(home: Path, model: ModelRef, tmp_path: Path) -> None:
    target = deploy(home, "trig-fail", model, tmp_path, FAILING)
    try:
        event = first_event(make(home, "trig-fail", 60))
    finally:
        target.delete("trig-fail")
    assert event["status"] == "failed" and event["state"] == "Failed"
    assert "exited" in event["reason"] and "boom: bad weights" in event["log_tail"]


def test_timeout_reports_the_last_state(home: Path, model: ModelRef, tmp_path: Path) -> None:
    target = deploy(home, "trig-slow", model, tmp_path, SLOW)
    try:
        event = first_event(make(home, "trig-slow", 1.0))
    finally:
        target.delete("trig-slow")
    assert event["status"] == "timeout" and event["state"] == "Transitioning"
    assert "trig-slow" in event["message"]


def test_error_when_there_is_no_such_service(home: Path) -> None:
    event = first_event(make(home, "trig-none", 10))
    assert event["status"] == "error" and "trig-none" in event["message"]
    bad_target = ServiceHealthTrigger(service_name="x", target="nowhere", deadline=time.time() + 5)
    assert first_event(bad_target)["status"] == "error"
