"""EdgeTarget: the IoT Edge deployment manifest's structure, and operations on a fake IoT Hub.

No IoT Hub can be reached here and its service SDK is not installed: tests that deploy or read
status inject :class:`FakeHub`, an in-memory stand-in for the IoT Hub control plane that
implements the target's ``EdgeClient`` protocol (``apply_configuration`` /
``get_module_twin``) the way IoT Hub does: the applied manifest becomes the modules'
desired properties, and the test plays the edge agent by writing reported properties.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from airflow_mlops.config import DeploymentConfig
from airflow_mlops.constants import ServiceState
from airflow_mlops.exceptions import ConfigError, DeploymentError, DeploymentNotFound
from airflow_mlops.targets import get_target
from airflow_mlops.targets.base import ModelRef, ServiceKeys, ServiceSpec
from airflow_mlops.targets.edge import (
    CREATE_OPTIONS_CHUNK,
    EdgeTarget,
    join_create_options,
    split_create_options,
)

KEYS = ServiceKeys("primary-secret-value", "secondary-secret-value")
MODEL = ModelRef(name="digits", version="3", path="/unused", digest="sha256:" + "ab" * 32)


def make_spec(**overrides: Any) -> ServiceSpec:
    values: dict[str, Any] = {
        "name": "digits-svc",
        "models": (MODEL,),
        "image": "registry.example/airflow-mlops/scoring:abc123",
        "manifest_hash": "abc123",
        "keys": KEYS,
        "config": DeploymentConfig(cpu_cores=0.5, memory_gb=0.5),
    }
    values.update(overrides)
    return ServiceSpec(**values)


class FakeHub:
    """In-memory fake of IoT Hub's configuration and twin API for one device (no IoT Hub here)."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.desired: dict[str, dict[str, Any]] = {"$edgeAgent": {}, "$edgeHub": {}}
        self.reported: dict[str, Any] = {}

    def apply_configuration(self, device_id: str, manifest: dict[str, Any]) -> None:
        assert device_id == "device-1"
        self.applied.append(copy.deepcopy(manifest))
        for module, content in manifest["modulesContent"].items():
            self.desired[module] = {
                **copy.deepcopy(content["properties.desired"]),
                "$version": len(self.applied),
            }

    def get_module_twin(self, device_id: str, module_id: str) -> dict[str, Any]:
        reported = {"modules": self.reported} if module_id == "$edgeAgent" else {}
        return {"properties": {"desired": copy.deepcopy(self.desired[module_id]), "reported": reported}}

    def agent_reports(self, name: str, runtime_status: str, image: str | None = None, **extra: Any) -> None:
        module = {"runtimeStatus": runtime_status, **extra}
        if image:
            module["settings"] = {"image": image}
        self.reported[name] = module


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
def target(hub: FakeHub) -> EdgeTarget:
    return EdgeTarget("device-1", hub, device_host="edge-box.local")


def _module_settings(manifest: dict[str, Any], name: str = "digits-svc") -> dict[str, Any]:
    return manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"][name]


def test_manifest_structure(target: EdgeTarget) -> None:
    """$edgeAgent has runtime, both system modules and the scoring module; $edgeHub has routes."""
    manifest = target.manifests(make_spec())[0]
    agent = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
    assert agent["schemaVersion"] == "1.1"
    assert agent["runtime"]["type"] == "docker" and "minDockerVersion" in agent["runtime"]["settings"]
    assert agent["systemModules"]["edgeAgent"]["settings"]["image"].startswith(
        "mcr.microsoft.com/azureiotedge-agent:"
    )
    hub_module = agent["systemModules"]["edgeHub"]
    assert {"type", "status", "restartPolicy", "settings"} <= hub_module.keys()
    module = _module_settings(manifest)
    assert {"version", "type", "status", "restartPolicy", "settings", "env"} <= module.keys()
    assert (
        module["type"] == "docker" and module["status"] == "running" and module["restartPolicy"] == "always"
    )
    assert module["settings"]["image"] == "registry.example/airflow-mlops/scoring:abc123"
    env = {k: v["value"] for k, v in module["env"].items()}
    assert env["MLOPS_PORT"] == "5001" and env["MLOPS_KEYS_FILE"] == "/etc/mlops/keys/keys.json"
    assert json.loads(env["MLOPS_STATE_MODELS"])[0]["version"] == "3"
    edge_hub = manifest["modulesContent"]["$edgeHub"]["properties.desired"]
    assert edge_hub["schemaVersion"] == "1.1"
    assert edge_hub["routes"] == {
        "digits_svcToUpstream": "FROM /messages/modules/digits-svc/outputs/* INTO $upstream"
    }
    assert edge_hub["storeAndForwardConfiguration"]["timeToLiveSecs"] > 0


def test_create_options_are_json_strings_in_512_char_chunks(target: EdgeTarget) -> None:
    """createOptions is a stringified JSON object split as the edge agent reads it (<=512 chars, <=4 KiB)."""
    manifest = target.manifests(make_spec())[0]
    for settings in (
        _module_settings(manifest)["settings"],
        manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["systemModules"]["edgeHub"][
            "settings"
        ],
    ):
        chunks = {k: v for k, v in settings.items() if k.startswith("createOptions")}
        assert chunks and all(isinstance(v, str) and len(v) <= CREATE_OPTIONS_CHUNK for v in chunks.values())
        assert sum(len(v) for v in chunks.values()) <= 4096
    options = join_create_options(_module_settings(manifest)["settings"])
    host = options["HostConfig"]
    assert host["PortBindings"] == {"5001/tcp": [{"HostPort": "5001"}]}
    assert host["Memory"] == 512 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
    assert host["Binds"] == ["/etc/airflow-mlops/keys/digits-svc:/etc/mlops/keys:ro"]


def test_long_create_options_split_and_overlong_refused() -> None:
    options = {"Labels": {f"label-{i}": "x" * 40 for i in range(30)}}
    chunks = split_create_options(options)
    assert list(chunks)[:3] == ["createOptions", "createOptions01", "createOptions02"]
    assert all(len(v) <= 512 for v in chunks.values())
    assert join_create_options(chunks) == options
    with pytest.raises(ConfigError, match="4096"):
        split_create_options({"Labels": {f"label-{i}": "x" * 40 for i in range(100)}})


def test_no_keys_or_credentials_in_the_manifest(target: EdgeTarget) -> None:
    """Keys stay on the device (bind mount); credential env is refused since the twin shows env."""
    text = json.dumps(target.manifests(make_spec()))
    assert KEYS.primary_key not in text and KEYS.secondary_key not in text
    with pytest.raises(ConfigError, match="credentials"):
        target.manifests(make_spec(environment={"MLOPS_COLLECT_AZURE_CONNECTION_STRING": "AccountKey=x"}))


@pytest.mark.parametrize(
    ("runtime", "state"),
    [
        ("running", ServiceState.HEALTHY),
        ("backoff", ServiceState.FAILED),
        ("failed", ServiceState.FAILED),
        ("stopped", ServiceState.UNHEALTHY),
    ],
)
def test_status_maps_runtime_status(
    target: EdgeTarget, hub: FakeHub, runtime: str, state: ServiceState
) -> None:
    """The module's reported runtimeStatus (fake IoT Hub twin) maps to Azure ML's states."""
    target.deploy(make_spec())
    assert target.status("digits-svc").state is ServiceState.TRANSITIONING  # not reported yet
    hub.agent_reports(
        "digits-svc",
        runtime,
        image="registry.example/airflow-mlops/scoring:abc123",
        exitCode=1,
        lastExitTime="2024-01-01T00:00:00Z",
    )
    status = target.status("digits-svc")
    assert status.state is state
    if state is not ServiceState.HEALTHY:
        assert runtime in status.reason


def test_deploy_update_list_delete(target: EdgeTarget, hub: FakeHub) -> None:
    """Deploy, update (previous image still reported → Transitioning), list and delete on the fake hub."""
    info = target.deploy(make_spec())
    assert info.url == "http://edge-box.local:5001"
    with pytest.raises(DeploymentError, match="already"):
        target.deploy(make_spec())
    hub.agent_reports("digits-svc", "running", image="registry.example/airflow-mlops/scoring:abc123")
    assert target.get("digits-svc").state is ServiceState.HEALTHY
    after = target.update(make_spec(image="registry.example/scoring:def456", manifest_hash="def456"))
    assert after.state is ServiceState.TRANSITIONING and after.url == info.url
    assert after.image == "registry.example/scoring:def456" and after.manifest_hash == "def456"
    assert [i.name for i in target.list(model="digits")] == ["digits-svc"]
    assert target.list(model="iris") == [] and target.list(image="other:1") == []
    target.delete("digits-svc")
    assert (
        "digits-svc" not in hub.applied[-1]["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    )
    assert all(
        not k.startswith("$") for k in hub.applied[-1]["modulesContent"]["$edgeAgent"]["properties.desired"]
    )
    with pytest.raises(DeploymentNotFound):
        target.status("digits-svc")
    with pytest.raises(DeploymentNotFound):
        target.update(make_spec())


def test_get_target_builds_edge_and_needs_a_client() -> None:
    target = get_target("edge", device_id="device-1")
    assert isinstance(target, EdgeTarget)
    assert target.manifests(make_spec())[0]["modulesContent"]  # building needs no client
    with pytest.raises(ConfigError, match="client"):
        target.deploy(make_spec())
