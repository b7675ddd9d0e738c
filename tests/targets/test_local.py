"""LocalTarget over real scoring processes: deploy, health, auth, state from a new instance,
zero-downtime update, failed update, broken scripts, delete."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest

from airflow_mlops.constants import ServiceState
from airflow_mlops.exceptions import ConfigError, DeploymentError, DeploymentNotFound, UpdateFailed
from airflow_mlops.hooks.registry import folder_digest
from airflow_mlops.targets import get_target
from airflow_mlops.targets.base import ModelRef, ServiceSpec
from airflow_mlops.targets.local import LocalTarget

BROKEN_SCRIPT = """\
def init():
    raise RuntimeError("boom: the model file is corrupt")


def run(raw_data):
    return raw_data
"""


def wait_state(target: LocalTarget, name: str, timeout: float = 60.0) -> ServiceState:
    deadline = time.monotonic() + timeout
    while True:
        state = target.status(name).state
        if state is not ServiceState.TRANSITIONING or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local-target")


@pytest.fixture(scope="module")
def model(digits_model_dir: Path) -> ModelRef:
    return ModelRef("digits", "1", str(digits_model_dir), folder_digest(digits_model_dir))


@pytest.fixture(scope="module")
def service(home: Path, model: ModelRef):
    """One service shared by the tests that only read it; deleted at the end."""
    target = LocalTarget(home)
    info = target.deploy(ServiceSpec(name="svc-a", models=(model,)))
    assert wait_state(target, "svc-a") is ServiceState.HEALTHY, target.logs("svc-a")
    yield info
    with contextlib.suppress(DeploymentNotFound):
        target.delete("svc-a")


def test_deploy_scores_with_either_key_and_refuses_without(
    home: Path, service, digits_rows: list[list[float]]
) -> None:
    keys = LocalTarget(home).keys("svc-a")
    response = httpx.post(service.scoring_uri, json={"data": digits_rows[:2]}, headers=auth(keys.primary_key))
    assert response.status_code == 200, response.text
    labels = response.json()["label"]
    assert len(labels) == 2 and all(0 <= label <= 9 for label in labels)
    assert httpx.post(service.scoring_uri, json={"data": digits_rows[:1]}).status_code == 401
    wrong = httpx.post(service.scoring_uri, json={"data": digits_rows[:1]}, headers=auth("not-the-key"))
    assert wrong.status_code == 401
    second = httpx.post(service.scoring_uri, json={"data": digits_rows[:1]}, headers=auth(keys.secondary_key))
    assert second.status_code == 200


def test_a_new_instance_sees_status_list_logs_keys(home: Path, service, model: ModelRef) -> None:
    fresh = get_target("local", home=str(home))
    assert fresh.status("svc-a").state is ServiceState.HEALTHY
    info = fresh.get("svc-a")
    assert info.url == service.url and info.state is ServiceState.HEALTHY
    assert info.models == [{"name": "digits", "version": "1", "digest": model.digest}]
    assert [s.name for s in fresh.list(model="digits")] == ["svc-a"]
    assert fresh.list(model="other") == []
    assert "Listening on http://127.0.0.1:" in fresh.logs("svc-a", tail=20)
    assert len(fresh.logs("svc-a", tail=2).splitlines()) <= 2
    version = httpx.get(f"{service.url}/version", headers=auth(fresh.keys("svc-a").primary_key)).json()
    assert version["models"] == info.models and version["manifest_hash"] == info.manifest_hash


def test_keys_stay_out_of_argv_env_state_and_logs(home: Path, service) -> None:
    target = LocalTarget(home)
    keys = target.keys("svc-a")
    state_text = (home / "svc-a.json").read_text()
    state = json.loads(state_text)
    keys_file = Path(state["keys_file"])
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    pid = state["pid"]
    exposed = [
        Path(f"/proc/{pid}/cmdline").read_bytes(),
        Path(f"/proc/{pid}/environ").read_bytes(),
        state_text.encode(),
        Path(state["log_path"]).read_bytes(),
        json.dumps(target.get("svc-a").to_dict()).encode(),
    ]
    for key in (keys.primary_key, keys.secondary_key):
        assert not any(key.encode() in blob for blob in exposed)
    assert "***" in repr(keys)


def test_requested_port_in_use_is_refused(home: Path, service, model: ModelRef) -> None:
    target = LocalTarget(home)
    port = json.loads((home / "svc-a.json").read_text())["port"]
    with pytest.raises(DeploymentError, match="in use"):
        target.deploy(ServiceSpec(name="svc-clash", models=(model,), config=service_config(port=port)))
    with pytest.raises(DeploymentError, match="already exists"):
        target.deploy(ServiceSpec(name="svc-a", models=(model,)))
    assert not (home / "svc-clash.json").exists()


def service_config(**values):
    from airflow_mlops.config import DeploymentConfig

    return DeploymentConfig(**values)


def test_broken_entry_script_is_failed_with_log_tail(home: Path, model: ModelRef, tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text(BROKEN_SCRIPT)
    target = LocalTarget(home)
    target.deploy(
        ServiceSpec(name="svc-broken", models=(model,), entry_script="score.py", source_dir=str(tmp_path))
    )
    try:
        assert wait_state(target, "svc-broken") is ServiceState.FAILED
        status = LocalTarget(home).status("svc-broken")
        assert status.state is ServiceState.FAILED and "exited" in status.reason
        assert "boom: the model file is corrupt" in LocalTarget(home).logs("svc-broken", tail=50)
    finally:
        target.delete("svc-broken")
    assert not (home / "svc-broken.json").exists() and not (home / "svc-broken").exists()


def test_update_in_place_keeps_url_and_keys_without_dropping_requests(
    home: Path, service, model: ModelRef, digits_rows: list[list[float]]
) -> None:
    target = LocalTarget(home)
    keys = target.keys("svc-a")
    before = json.loads((home / "svc-a.json").read_text())
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def hammer() -> None:
        nonlocal served
        with httpx.Client(headers=auth(keys.primary_key), timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post(service.scoring_uri, json={"data": digits_rows[:1]})
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                served += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        info = LocalTarget(home).update(ServiceSpec(name="svc-a", models=(model,), manifest_hash="sha256:v2"))
    finally:
        time.sleep(0.2)
        stop.set()
        thread.join()
    assert info.url == service.url and info.state is ServiceState.HEALTHY
    assert target.keys("svc-a") == keys
    assert served > 0 and failures == []
    version = httpx.get(f"{service.url}/version", headers=auth(keys.primary_key)).json()
    assert version["manifest_hash"] == "sha256:v2"
    after = json.loads((home / "svc-a.json").read_text())
    assert after["pid"] != before["pid"] and not alive(before["pid"]) and alive(after["pid"])
    assert after["created"] == before["created"]
    assert not Path(before["keys_file"]).exists()


def test_failed_update_leaves_the_old_version_serving(
    home: Path, service, model: ModelRef, tmp_path: Path, digits_rows: list[list[float]]
) -> None:
    (tmp_path / "score.py").write_text(BROKEN_SCRIPT)
    target = LocalTarget(home)
    keys = target.keys("svc-a")
    before = json.loads((home / "svc-a.json").read_text())
    with pytest.raises(UpdateFailed) as caught:
        target.update(
            ServiceSpec(
                name="svc-a",
                models=(model,),
                entry_script="score.py",
                source_dir=str(tmp_path),
                manifest_hash="x",
            )
        )
    assert "boom: the model file is corrupt" in caught.value.log_tail
    assert json.loads((home / "svc-a.json").read_text())["pid"] == before["pid"]
    assert target.status("svc-a").state is ServiceState.HEALTHY
    version = httpx.get(f"{service.url}/version", headers=auth(keys.primary_key)).json()
    assert version["manifest_hash"] == before["manifest_hash"]
    response = httpx.post(service.scoring_uri, json={"data": digits_rows[:1]}, headers=auth(keys.primary_key))
    assert response.status_code == 200
    with pytest.raises(ConfigError, match="port"):
        target.update(
            ServiceSpec(name="svc-a", models=(model,), config=service_config(port=before["port"] + 1))
        )


def test_delete_stops_the_process_and_removes_every_file(home: Path, model: ModelRef) -> None:
    target = LocalTarget(home)
    target.deploy(ServiceSpec(name="svc-gone", models=(model,)))
    state = json.loads((home / "svc-gone.json").read_text())
    assert wait_state(target, "svc-gone") is ServiceState.HEALTHY
    LocalTarget(home).delete("svc-gone")
    assert not alive(state["pid"])
    assert not (home / "svc-gone.json").exists() and not (home / "svc-gone").exists()
    with pytest.raises(DeploymentNotFound):
        target.status("svc-gone")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{state['url']}/health/live", timeout=2)


def test_concurrent_deploys_of_one_name_leave_one_service(home: Path, model: ModelRef) -> None:
    results: list[str] = []

    def deploy() -> None:
        try:
            LocalTarget(home).deploy(ServiceSpec(name="svc-race", models=(model,)))
            results.append("deployed")
        except DeploymentError:
            results.append("refused")

    threads = [threading.Thread(target=deploy) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(results) == ["deployed", "refused", "refused"]
        json.loads((home / "svc-race.json").read_text())  # whole, parseable
        assert not [p for p in os.listdir(home) if p.endswith(".tmp")]
    finally:
        LocalTarget(home).delete("svc-race")
