"""AciTarget: the container group built with the Azure SDK, serialised and checked; a fake ACI API.

No Azure subscription can be reached here: tests that call ``deploy``/``update``/``status``/...
inject :class:`FakeAci`, an in-memory stand-in for the ``ContainerInstanceManagementClient``
control plane (``container_groups`` and ``containers`` operations). Request bodies are the
SDK's own ``serialize()`` output, checked against the required fields the SDK's models
declare (generated from the ARM API specification).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.containerinstance import models as aci
from azure.mgmt.containerinstance._serialization import Model

from airflow_mlops.config import DeploymentConfig
from airflow_mlops.constants import ServiceState
from airflow_mlops.exceptions import ConfigError, DeploymentError, DeploymentNotFound
from airflow_mlops.targets import get_target
from airflow_mlops.targets.aci import AciTarget, FileKeyStore, group_status
from airflow_mlops.targets.base import ModelRef, ServiceKeys, ServiceSpec

KEYS = ServiceKeys("primary-secret-value", "secondary-secret-value")
MODEL = ModelRef(name="digits", version="3", path="/unused", digest="sha256:" + "ab" * 32)


def make_spec(**overrides: Any) -> ServiceSpec:
    values: dict[str, Any] = {
        "name": "digits-svc",
        "models": (MODEL,),
        "image": "registry.example/airflow-mlops/scoring:abc123",
        "manifest_hash": "abc123",
        "keys": KEYS,
        "environment": {"MLOPS_COLLECT_AZURE_CONNECTION_STRING": "AccountKey=hush", "LOG_LEVEL": "info"},
    }
    values.update(overrides)
    return ServiceSpec(**values)


class _Poller:
    def __init__(self, value: Any = None) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class FakeAci:
    """In-memory fake of the ACI control plane (no Azure here): stores groups the SDK would send.

    Like ACI, a read returns the group without secret volume contents or secure values.
    """

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.container_groups = self
        self.containers = self

    def begin_create_or_update(self, rg: str, name: str, group: aci.ContainerGroup) -> _Poller:
        self.calls.append("create_or_update")
        body = group.serialize()
        body["properties"]["provisioningState"] = "Creating"
        body["name"] = name
        self.groups[(rg, name)] = body
        return _Poller()

    def get(self, rg: str, name: str) -> aci.ContainerGroup:
        try:
            body = json.loads(json.dumps(self.groups[(rg, name)]))
        except KeyError:
            raise ResourceNotFoundError("ResourceNotFound") from None
        for volume in body["properties"].get("volumes", []):
            volume.pop("secret", None)
        for container in body["properties"]["containers"]:
            for env in container["properties"].get("environmentVariables", []):
                env.pop("secureValue", None)
        return aci.ContainerGroup.deserialize(body)

    def begin_delete(self, rg: str, name: str) -> _Poller:
        self.calls.append("delete")
        if self.groups.pop((rg, name), None) is None:
            raise ResourceNotFoundError("ResourceNotFound")
        return _Poller()

    def list_by_resource_group(self, rg: str) -> list[aci.ContainerGroup]:
        return [self.get(g, name) for g, name in self.groups if g == rg]

    def list_logs(self, rg: str, name: str, container: str, tail: int) -> aci.Logs:
        return aci.Logs(content="\n".join(f"{container} line {i}" for i in range(tail)))

    def report(self, name: str, provisioning: str, container_state: str | None = None, **view: Any) -> None:
        """Set what ACI would report for a group (provisioning state and the container's view)."""
        body = self.groups[("rg", name)]
        body["properties"]["provisioningState"] = provisioning
        if container_state:
            body["properties"]["containers"][0]["properties"]["instanceView"] = {
                "currentState": {"state": container_state, **view}
            }


@pytest.fixture
def fake() -> FakeAci:
    return FakeAci()


@pytest.fixture
def target(fake: FakeAci, tmp_path: Any) -> AciTarget:
    """An AciTarget on the fake control plane, with its key store in a temporary folder."""
    return AciTarget("rg", "westeurope", client=fake, key_store=FileKeyStore(tmp_path / "keys"))


def _missing_required(model: Model, path: str = "group") -> list[str]:
    """Walk an SDK model tree and list required fields (per the SDK's ARM-generated rules) left empty."""
    missing = [
        f"{path}.{attr}"
        for attr, rule in model._validation.items()
        if rule.get("required") and getattr(model, attr) is None
    ]
    for attr in model._attribute_map:
        value = getattr(model, attr, None)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, Model):
                missing += _missing_required(item, f"{path}.{attr}[{i}]")
    return missing


def test_request_body_has_every_required_field(target: AciTarget) -> None:
    """Every field the ARM spec marks required is set, and the REST shape is ACI's."""
    group = target.container_group(
        make_spec(config=DeploymentConfig(cpu_cores=2, memory_gb=3.5, gpu_cores=1))
    )
    assert _missing_required(group) == []
    body = group.serialize()
    assert body["location"] == "westeurope"
    props = body["properties"]
    assert props["osType"] == "Linux" and props["restartPolicy"] == "Always"
    assert props["ipAddress"] == {
        "type": "Public",
        "ports": [{"port": 5001, "protocol": "TCP"}],
        "dnsNameLabel": "digits-svc",
        "autoGeneratedDomainNameLabelScope": "Unsecure",
    }
    container = props["containers"][0]
    assert container["name"] == "scoring"
    cp = container["properties"]
    assert cp["image"] == "registry.example/airflow-mlops/scoring:abc123"
    assert cp["ports"] == [{"port": 5001, "protocol": "TCP"}]
    assert cp["resources"]["requests"] == {"cpu": 2.0, "memoryInGB": 3.5, "gpu": {"count": 1, "sku": "V100"}}
    assert cp["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": 5001, "scheme": "http"}
    assert cp["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert cp["volumeMounts"] == [{"name": "keys", "mountPath": "/etc/mlops/keys", "readOnly": True}]
    env = {e["name"]: e for e in cp["environmentVariables"]}
    assert env["MLOPS_MAX_CONCURRENT_REQUESTS"]["value"] == "4"
    assert env["MLOPS_KEYS_FILE"]["value"] == "/etc/mlops/keys/keys.json"
    assert env["MLOPS_COLLECT_AZURE_CONNECTION_STRING"] == {
        "name": "MLOPS_COLLECT_AZURE_CONNECTION_STRING",
        "secureValue": "AccountKey=hush",
    }
    tags = body["tags"]
    assert tags["io.airflow-mlops.image"] == "registry.example/airflow-mlops/scoring:abc123"
    assert json.loads(tags["io.airflow-mlops.models"])[0]["version"] == "3"
    assert all("/" not in key and len(value) <= 256 for key, value in tags.items())


def test_required_field_check_bites() -> None:
    """The required-field walk finds a missing image (so the check above can fail)."""
    broken = aci.ContainerGroup(
        containers=[aci.Container(name="x", image=None, resources=None)], os_type="Linux"
    )
    assert set(_missing_required(broken)) == {"group.containers[0].image", "group.containers[0].resources"}


def test_keys_only_in_the_secret_volume(target: AciTarget) -> None:
    """The keys file is a base64 secret volume entry; neither key appears in env or tags."""
    body = target.container_group(make_spec()).serialize()
    secret = body["properties"]["volumes"][0]["secret"]
    assert json.loads(base64.b64decode(secret["keys.json"])) == KEYS.to_dict()
    del body["properties"]["volumes"]
    assert KEYS.primary_key not in json.dumps(body) and KEYS.secondary_key not in json.dumps(body)


def test_overlong_tag_is_a_config_error(target: AciTarget) -> None:
    models = tuple(ModelRef(f"model-{i}", "1", "/x", "sha256:" + "0" * 64) for i in range(4))
    with pytest.raises(ConfigError, match="256"):
        target.container_group(make_spec(models=models))


def test_deploy_update_keep_dns_label_and_keys(target: AciTarget, fake: FakeAci) -> None:
    """Deploy then update on the fake ACI API: same DNS label, URL and keys; resources change re-creates."""
    info = target.deploy(make_spec())
    assert info.url == "http://digits-svc.westeurope.azurecontainer.io:5001"
    assert info.state is ServiceState.TRANSITIONING
    with pytest.raises(DeploymentError, match="already exists"):
        target.deploy(make_spec())
    new = ModelRef(name="digits", version="4", path="/unused", digest="sha256:" + "cd" * 32)
    after = target.update(make_spec(models=(new,), image="registry.example/scoring:def456", keys=None))
    assert after.url == info.url
    assert after.image == "registry.example/scoring:def456" and after.models[0]["version"] == "4"
    sent = fake.groups[("rg", "digits-svc")]["properties"]
    assert json.loads(base64.b64decode(sent["volumes"][0]["secret"]["keys.json"])) == KEYS.to_dict()
    assert target.keys("digits-svc") == KEYS
    assert fake.calls == ["create_or_update", "create_or_update"]  # in place: no delete
    target.update(make_spec(config=DeploymentConfig(cpu_cores=2)))
    assert fake.calls[-2:] == ["delete", "create_or_update"]  # ACI cannot resize in place
    assert fake.groups[("rg", "digits-svc")]["properties"]["ipAddress"]["dnsNameLabel"] == "digits-svc"


def _event(name: str, message: str) -> aci.Event:
    return aci.Event.deserialize({"name": name, "type": "Warning", "message": message})


def _container_state(state: str | None, view: dict[str, Any]) -> aci.ContainerState | None:
    # The SDK treats these as read-only (server-set), so build them the way a response is read.
    if state is None:
        return None
    camel = {"detail_status": "detailStatus", "exit_code": "exitCode"}
    return aci.ContainerState.deserialize({"state": state, **{camel[k]: v for k, v in view.items()}})


@pytest.mark.parametrize(
    ("provisioning", "container", "view", "events", "state", "reason"),
    [
        ("Creating", None, {}, [], ServiceState.TRANSITIONING, "Creating"),
        ("Succeeded", "Running", {}, [], ServiceState.HEALTHY, ""),
        ("Succeeded", None, {}, [], ServiceState.TRANSITIONING, "not started"),
        (
            "Succeeded",
            "Waiting",
            {"detail_status": "CrashLoopBackOff: Back-off restarting"},
            [],
            ServiceState.FAILED,
            "CrashLoopBackOff",
        ),
        (
            "Succeeded",
            "Waiting",
            {},
            [_event("Failed", "Failed to pull image")],
            ServiceState.FAILED,
            "Failed to pull image",
        ),
        (
            "Succeeded",
            "Terminated",
            {"detail_status": "Completed", "exit_code": 0},
            [],
            ServiceState.UNHEALTHY,
            "Terminated",
        ),
        (
            "Failed",
            None,
            {},
            [_event("ServiceUnavailable", "The requested resource is not available in location")],
            ServiceState.UNSCHEDULABLE,
            "not available",
        ),
        (
            "Failed",
            None,
            {},
            [_event("InvalidImage", "bad image ref")],
            ServiceState.FAILED,
            "bad image ref",
        ),
    ],
    ids=[
        "creating",
        "running",
        "not-started",
        "crashloop",
        "pull-failed",
        "terminated",
        "capacity",
        "failed",
    ],
)
def test_status_mapping(provisioning, container, view, events, state, reason) -> None:  # type: ignore[no-untyped-def]
    """Provisioning state, container instance view and events map to Azure ML's states (SDK models)."""
    instance_view = aci.ContainerPropertiesInstanceView()
    instance_view.current_state = _container_state(container, view)  # server-set: assigned, as a read would
    instance_view.events = events
    c = aci.Container(name="scoring", image="x", resources=None)
    c.instance_view = instance_view
    group = aci.ContainerGroup(containers=[c], os_type="Linux")
    group.provisioning_state = provisioning
    result = group_status(group)
    assert result.state is state
    assert reason in result.reason


def test_status_logs_list_delete(target: AciTarget, fake: FakeAci, tmp_path: Any) -> None:
    """Status, logs, list (by model and image) and delete against the fake ACI API."""
    target.deploy(make_spec())
    target.deploy(
        make_spec(name="other-svc", models=(ModelRef("iris", "1", "/x", "sha256:00"),), image="other:1")
    )
    fake.report("digits-svc", "Succeeded", "Running")
    assert target.status("digits-svc").state is ServiceState.HEALTHY
    assert "scoring line 2" in target.logs("digits-svc", tail=3)
    assert [i.name for i in target.list(model="digits")] == ["digits-svc"]
    assert [i.name for i in target.list(image="other:1")] == ["other-svc"]
    target.delete("digits-svc")
    assert ("rg", "digits-svc") not in fake.groups
    assert not (tmp_path / "keys" / "digits-svc.json").exists()
    with pytest.raises(DeploymentNotFound):
        target.status("digits-svc")
    with pytest.raises(DeploymentNotFound):
        target.delete("digits-svc")


def test_key_store_file_is_owner_only(tmp_path: Any) -> None:
    store = FileKeyStore(tmp_path / "k")
    store.put("svc", KEYS)
    assert store.get("svc") == KEYS
    assert (tmp_path / "k" / "svc.json").stat().st_mode & 0o077 == 0


def test_get_target_builds_aci(fake: FakeAci, tmp_path: Any) -> None:
    target = get_target("aci", resource_group="rg", client=fake, key_store=FileKeyStore(tmp_path))
    assert isinstance(target, AciTarget)
    assert target.manifests(make_spec())[0]["properties"]["ipAddress"]["dnsNameLabel"] == "digits-svc"
