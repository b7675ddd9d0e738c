"""The Docker target against the real engine: deploy, health, auth, list, crash loop, update, delete.

Images are built once per module from the locally debootstrapped base image; the gateway
is the locally debootstrapped HAProxy image. The update test keeps a loopback load of
concurrent async clients running across the switch and requires zero failed requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("MLOPS_BASE_IMAGE", "airflow-mlops/base:bookworm")
os.environ.setdefault("MLOPS_GATEWAY_IMAGE", "airflow-mlops/haproxy:bookworm")

from airflow_mlops.constants import ServiceState
from airflow_mlops.exceptions import DeploymentFailed, UpdateFailed
from airflow_mlops.hooks.deployment import DeploymentHook
from airflow_mlops.hooks.registry import MlflowRegistryHook
from airflow_mlops.images.builder import ImageBuilder
from airflow_mlops.targets.docker import DockerTarget

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

REPOSITORY = "airflow-mlops/test-docker-target"
BROKEN = (
    "def init():\n    raise RuntimeError('broken on purpose: no model here')\n\n"
    "def run(raw):\n    return raw\n"
)


@pytest.fixture(scope="module")
def env(docker_engine: None, digits_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two model versions and three images: v1, v2, and v1 with an entry script whose init() raises."""
    from airflow_mlops.examples.digits import train_digits_onnx

    registry = MlflowRegistryHook()
    name = f"digits-dock-{uuid.uuid4().hex[:6]}"
    registry.register_model(name, str(digits_model_dir))
    v2_dir = tmp_path_factory.mktemp("digits-v2")
    train_digits_onnx(v2_dir, hidden=8, max_iter=20)
    registry.register_model(name, str(v2_dir))
    broken_src = tmp_path_factory.mktemp("broken-src")
    (broken_src / "score.py").write_text(BROKEN)
    builder = ImageBuilder(registry=registry, echo=lambda _line: None)
    images = {
        "v1": builder.build_image([f"{name}:1"], repository=REPOSITORY),
        "v2": builder.build_image([f"{name}:2"], repository=REPOSITORY),
        "broken": builder.build_image(
            [f"{name}:1"], entry_script="score.py", source_dir=str(broken_src), repository=REPOSITORY
        ),
    }
    target = DockerTarget(ready_timeout=90, drain_timeout=10)
    hook = DeploymentHook(target=target, registry=registry)
    yield {"registry": registry, "model": name, "images": images, "target": target, "hook": hook}
    for info in target.list():
        if info.name.startswith("t-"):
            target.delete(info.name)
    for result in images.values():
        subprocess.run(["docker", "rmi", "-f", result.image], capture_output=True)


def _deploy(env, service: str, image: str = "v1", version: str = "1", **kw):
    result = env["images"][image]
    return env["hook"].deploy_service(
        service, [f"{env['model']}:{version}"], image=result.image, manifest_hash=result.manifest_hash, **kw
    )


def _version(url: str, key: str) -> dict:
    response = httpx.get(f"{url}/version", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def _leftovers(service: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=io.airflow-mlops/service={service}",
         "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    nets = subprocess.run(
        ["docker", "network", "ls", "--filter", f"name=mlops-{service}", "--format", "{{.Name}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out + nets


def test_deploy_healthy_scores_with_key_lists_and_deletes(env, digits_rows) -> None:
    service = f"t-{uuid.uuid4().hex[:6]}"
    target: DockerTarget = env["target"]
    info = _deploy(env, service, config={"cpu_cores": 0.5, "memory_gb": 0.5})
    try:
        assert info.url.startswith("http://127.0.0.1:")
        assert env["hook"].wait_until_healthy(service, timeout=120).state is ServiceState.HEALTHY
        keys = target.keys(service)
        body = {"data": digits_rows[:2]}
        auth = {"Authorization": f"Bearer {keys.secondary_key}"}
        ok = httpx.post(info.scoring_uri, json=body, headers=auth)
        assert ok.status_code == 200 and len(ok.json()["label"]) == 2
        assert httpx.post(info.scoring_uri, json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(info.scoring_uri, json=body, headers=wrong).status_code == 401
        doc = _version(info.url, keys.primary_key)
        assert doc["manifest_hash"] == env["images"]["v1"].manifest_hash
        assert [(m["name"], m["version"]) for m in doc["models"]] == [(env["model"], "1")]

        # Keys: only in the 0600 file mounted read-only, never in env or labels.
        inspect = target.client.inspect_container(info.details["container_id"])
        flat = json.dumps({"env": inspect["Config"]["Env"], "labels": inspect["Config"]["Labels"]})
        assert keys.primary_key not in flat and keys.secondary_key not in flat
        secret = target._keys_path(service)
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        mounts = {m["Destination"]: m for m in inspect["Mounts"]}
        assert mounts["/etc/mlops/keys/keys.json"]["RW"] is False
        host = inspect["HostConfig"]
        assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
        assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 512 * 1024 * 1024
        assert inspect["Config"]["User"] == "10001:10001"
        gateway = target.client.inspect_container(target.gateway_name(service))
        assert gateway["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"

        assert [s.name for s in target.list(model=env["model"]) if s.name == service] == [service]
        assert service in {s.name for s in target.list(image=env["images"]["v1"].image)}
        assert service not in {s.name for s in target.list(model="no-such-model")}
        assert f"deployment:docker/{service}" in env["registry"].users(env["model"], "1")
    finally:
        env["hook"].delete_service(service)
    assert _leftovers(service) == []
    assert not target._dir(service).exists()
    assert f"deployment:docker/{service}" not in env["registry"].users(env["model"], "1")


def test_broken_entry_script_ends_failed_with_its_log_tail(env) -> None:
    service = f"t-{uuid.uuid4().hex[:6]}"
    _deploy(env, service, image="broken")
    try:
        with pytest.raises(DeploymentFailed) as err:
            env["hook"].wait_until_healthy(service, timeout=120, poll_interval=1)
        assert err.value.state == "Failed"
        assert "broken on purpose" in str(err.value)
    finally:
        env["hook"].delete_service(service)
    assert _leftovers(service) == []


def _load(url: str, key: str, rows: list, stop: threading.Event, stats: dict) -> None:
    async def main() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=10) as client:

            async def worker() -> None:
                while not stop.is_set():
                    try:
                        r = await client.post(f"{url}/score", json={"data": rows[:1]}, headers=headers)
                    except httpx.HTTPError as e:
                        stats["failed"].append(repr(e))
                        continue
                    if r.status_code == 200:
                        stats["ok"] += 1
                    else:
                        stats["failed"].append(f"{r.status_code} {r.text[:200]}")

            await asyncio.gather(*(worker() for _ in range(8)))

    asyncio.run(main())


def test_update_under_load_has_no_failed_request(env, digits_rows) -> None:
    service = f"t-{uuid.uuid4().hex[:6]}"
    info = _deploy(env, service)
    hook: DeploymentHook = env["hook"]
    try:
        hook.wait_until_healthy(service, timeout=120, poll_interval=1)
        keys = hook.get_keys(service)
        stats: dict = {"ok": 0, "failed": []}
        stop = threading.Event()
        loader = threading.Thread(target=_load, args=(info.url, keys.primary_key, digits_rows, stop, stats))
        started = time.monotonic()
        loader.start()
        try:
            time.sleep(2)
            v2 = env["images"]["v2"]
            updated = hook.update_service(
                service, [f"{env['model']}:2"], image=v2.image, manifest_hash=v2.manifest_hash
            )
            time.sleep(max(1.0, 10 - (time.monotonic() - started)))  # ~10 s of load in all
        finally:
            stop.set()
            loader.join(timeout=30)
        print(f"\nupdate under load: {stats['ok']} requests OK, {len(stats['failed'])} failed")
        assert stats["failed"] == [], stats["failed"][:5]
        assert stats["ok"] > 50
        assert updated.url == info.url
        assert hook.get_keys(service) == keys
        doc = _version(info.url, keys.primary_key)
        assert [(m["name"], m["version"]) for m in doc["models"]] == [(env["model"], "2")]
        assert doc["manifest_hash"] == v2.manifest_hash
        # One scoring container left (the new one); the old version was released.
        assert len(env["target"]._containers(service, "scoring")) == 1
        assert f"deployment:docker/{service}" not in env["registry"].users(env["model"], "1")

        # A failed update leaves v2 serving, same URL and keys, and says why.
        broken = env["images"]["broken"]
        with pytest.raises(UpdateFailed, match="broken on purpose"):
            hook.update_service(service, [f"{env['model']}:1"], image=broken.image)
        assert [m["version"] for m in _version(info.url, keys.primary_key)["models"]] == ["2"]
        assert hook.get_service_state(service).state is ServiceState.HEALTHY
    finally:
        hook.delete_service(service)
    assert _leftovers(service) == []
