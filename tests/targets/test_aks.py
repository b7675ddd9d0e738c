"""AksTarget: manifests validated against the official Kubernetes schemas, operations on a fake API.

No cluster can be reached here, so every test that calls ``deploy``/``update``/``status``/...
injects :class:`FakeCluster`, an in-memory stand-in for the Kubernetes control plane (the
CoreV1/AppsV1/AutoscalingV2/PolicyV1 methods the target calls). The objects it stores are the
ones the real ``kubernetes`` client serialises; their schemas are checked with
``kubernetes_validate`` in strict mode.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from airflow_mlops.config import AutoscaleConfig, DeploymentConfig
from airflow_mlops.constants import LABEL_PREFIX, ServiceState
from airflow_mlops.exceptions import ConfigError, DeploymentError, DeploymentNotFound
from airflow_mlops.targets import get_target
from airflow_mlops.targets.aks import AksTarget, deployment_status
from airflow_mlops.targets.base import ModelRef, ServiceKeys, ServiceSpec

K8S_VERSION = kubernetes_validate.utils.latest_version()
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


class FakeCluster:
    """In-memory fake of the Kubernetes API methods AksTarget calls (no cluster here).

    Objects are stored as the JSON the real client would send and handed back as the real
    client's model classes, so the target reads them exactly as it would from a cluster.
    """

    KINDS = {
        "namespaced_secret": "V1Secret",
        "namespaced_service": "V1Service",
        "namespaced_deployment": "V1Deployment",
        "namespaced_horizontal_pod_autoscaler": "V2HorizontalPodAutoscaler",
        "namespaced_pod_disruption_budget": "V1PodDisruptionBudget",
    }

    def __init__(self) -> None:
        self.store: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.pods: list[k8s.V1Pod] = []
        self.fail_create: set[str] = set()
        self.calls: list[str] = []
        self._api = k8s.ApiClient()

    def __getattr__(self, attr: str) -> Any:
        verb, _, suffix = attr.partition("_")
        if suffix not in self.KINDS:
            raise AttributeError(attr)
        return lambda *args, **kwargs: getattr(self, f"_{verb}")(suffix, *args, **kwargs)

    def _model(self, suffix: str, data: dict[str, Any]) -> Any:
        return self._api._ApiClient__deserialize(copy.deepcopy(data), self.KINDS[suffix])

    def _create(self, suffix: str, namespace: str, body: Any) -> Any:
        self.calls.append(f"create {suffix}")
        data = self._api.sanitize_for_serialization(body)
        key = (suffix, namespace, data["metadata"]["name"])
        if suffix in self.fail_create:
            raise ApiException(status=422, reason="Unprocessable Entity")
        if key in self.store:
            raise ApiException(status=409, reason="AlreadyExists")
        data["metadata"]["generation"] = 1
        self.store[key] = data
        return self._model(suffix, data)

    def _read(self, suffix: str, name: str, namespace: str) -> Any:
        try:
            return self._model(suffix, self.store[(suffix, namespace, name)])
        except KeyError:
            raise ApiException(status=404, reason="Not Found") from None

    def _delete(self, suffix: str, name: str, namespace: str) -> None:
        self.calls.append(f"delete {suffix}")
        if self.store.pop((suffix, namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")

    def _patch(self, suffix: str, name: str, namespace: str, body: Any) -> Any:
        self.calls.append(f"patch {suffix}")
        current = self.store.get((suffix, namespace, name))
        if current is None:
            raise ApiException(status=404, reason="Not Found")
        _merge(current, self._api.sanitize_for_serialization(body))
        current["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        return self._model(suffix, current)

    def _replace(self, suffix: str, name: str, namespace: str, body: Any) -> Any:
        self.calls.append(f"replace {suffix}")
        self.store[(suffix, namespace, name)] = self._api.sanitize_for_serialization(body)
        return self._model(suffix, self.store[(suffix, namespace, name)])

    def _list(self, suffix: str, namespace: str, label_selector: str = "") -> Any:
        key, _, value = label_selector.partition("=")
        items = [
            self._model(suffix, data)
            for (s, ns, _), data in self.store.items()
            if s == suffix and ns == namespace and data["metadata"].get("labels", {}).get(key) == value
        ]
        return k8s.V1DeploymentList(items=items)

    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> Any:
        key, _, value = label_selector.partition("=")
        return k8s.V1PodList(items=[p for p in self.pods if (p.metadata.labels or {}).get(key) == value])

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str, tail_lines: int) -> str:
        return "\n".join(f"{name} line {i}" for i in range(tail_lines))

    def set_deployment_status(self, name: str, status: dict[str, Any], namespace: str = "ml") -> None:
        self.store[("namespaced_deployment", namespace, name)]["status"] = status


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def target(cluster: FakeCluster) -> AksTarget:
    """An AksTarget whose four API clients are the fake control plane."""
    return AksTarget(
        namespace="ml", core_v1=cluster, apps_v1=cluster, autoscaling_v2=cluster, policy_v1=cluster
    )


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_manifests_validate_against_the_kubernetes_schema(target: AksTarget) -> None:
    """Every object (with autoscaling and a GPU) passes strict schema validation (no cluster needed)."""
    spec = make_spec(
        config=DeploymentConfig(gpu_cores=1, autoscale=AutoscaleConfig(enabled=True, max_replicas=4))
    )
    objects = target.manifests(spec)
    assert [o["kind"] for o in objects] == [
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_broken_object(target: AksTarget) -> None:
    """The validator is not a rubber stamp: an unknown field fails strict validation."""
    deployment = _by_kind(target.manifests(make_spec()))["Deployment"]
    deployment["spec"]["replicaz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_deployment_shape(target: AksTarget) -> None:
    """Resources, probes, rolling update, security context, env settings and state annotations."""
    spec = make_spec(
        config=DeploymentConfig(
            cpu_cores=0.5,
            memory_gb=1.5,
            replicas=3,
            gpu_cores=1,
            max_concurrent_requests=8,
            max_queue_length=20,
        )
    )
    objects = _by_kind(target.manifests(spec))
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    container = _container(deployment)
    assert container["image"] == spec.image
    assert container["ports"][0]["containerPort"] == 5001
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1536Mi"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] != 0
    env = {e["name"]: e for e in container["env"]}
    assert env["MLOPS_MAX_CONCURRENT_REQUESTS"]["value"] == "8"
    assert env["MLOPS_MAX_QUEUE"]["value"] == "20"
    assert env["MLOPS_PORT"]["value"] == "5001"
    assert env["MLOPS_KEYS_FILE"]["value"] == "/etc/mlops/keys/keys.json"
    assert env["LOG_LEVEL"]["value"] == "info"
    assert env["MLOPS_COLLECT_AZURE_CONNECTION_STRING"]["valueFrom"]["secretKeyRef"]["name"] == spec.name
    mount = container["volumeMounts"][0]
    assert mount["mountPath"] == "/etc/mlops/keys" and mount["readOnly"] is True
    annotations = deployment["metadata"]["annotations"]
    assert json.loads(annotations[f"{LABEL_PREFIX}/models"]) == [
        {"name": "digits", "version": "3", "digest": MODEL.digest}
    ]
    assert annotations[f"{LABEL_PREFIX}/image"] == spec.image
    assert annotations[f"{LABEL_PREFIX}/manifest-hash"] == "abc123"
    assert "HorizontalPodAutoscaler" not in objects
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert objects["Service"]["spec"]["type"] == "ClusterIP"


def test_keys_live_only_in_the_secret(target: AksTarget) -> None:
    """The keys file is a Secret entry; no key or credential appears in env, labels or annotations."""
    objects = target.manifests(make_spec())
    secret = _by_kind(objects)["Secret"]
    assert json.loads(base64.b64decode(secret["data"]["keys.json"])) == KEYS.to_dict()
    others = json.dumps([o for o in objects if o["kind"] != "Secret"])
    for secret_value in (KEYS.primary_key, KEYS.secondary_key, "AccountKey=hush"):
        assert secret_value not in others


def test_autoscale_makes_an_hpa_and_leaves_replicas_to_it(target: AksTarget) -> None:
    """With autoscaling on, the Deployment has no replica count and an autoscaling/v2 HPA targets it."""
    config = DeploymentConfig(
        autoscale=AutoscaleConfig(enabled=True, min_replicas=2, max_replicas=6, target_utilization=60)
    )
    objects = _by_kind(target.manifests(make_spec(config=config)))
    assert "replicas" not in objects["Deployment"]["spec"]
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "digits-svc",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60


def test_invalid_name_and_missing_image_are_config_errors(target: AksTarget) -> None:
    with pytest.raises(ConfigError):
        target.manifests(make_spec(name="Digits_Svc"))
    with pytest.raises(ConfigError):
        target.manifests(make_spec(image=None))


def test_deploy_creates_every_object_and_refuses_a_second_time(
    target: AksTarget, cluster: FakeCluster
) -> None:
    """Deploy on the fake control plane (no cluster here): five objects, a stable URL, readable keys."""
    info = target.deploy(make_spec(config=DeploymentConfig(autoscale=AutoscaleConfig(enabled=True))))
    kinds = sorted(s for s, ns, name in cluster.store if ns == "ml" and name == "digits-svc")
    assert len(kinds) == 5
    assert info.url == "http://digits-svc.ml.svc.cluster.local:80"
    assert info.target == "aks"
    assert info.models == [{"name": "digits", "version": "3", "digest": MODEL.digest}]
    assert info.state is ServiceState.TRANSITIONING  # no status reported yet
    assert target.keys("digits-svc") == KEYS
    with pytest.raises(DeploymentError, match="already exists"):
        target.deploy(make_spec())


def test_deploy_rolls_back_when_an_object_is_refused(target: AksTarget, cluster: FakeCluster) -> None:
    """A refused Service (fake API returns 422) leaves no Secret or Deployment behind."""
    cluster.fail_create.add("namespaced_service")
    with pytest.raises(DeploymentError, match="Service"):
        target.deploy(make_spec())
    assert cluster.store == {}


def test_update_keeps_service_url_and_keys(target: AksTarget, cluster: FakeCluster) -> None:
    """Update patches the Deployment (image, env, annotations) and leaves Service and Secret alone."""
    before = target.deploy(make_spec())
    secret_before = copy.deepcopy(cluster.store[("namespaced_secret", "ml", "digits-svc")])
    service_before = copy.deepcopy(cluster.store[("namespaced_service", "ml", "digits-svc")])
    new_model = ModelRef(name="digits", version="4", path="/unused", digest="sha256:" + "cd" * 32)
    after = target.update(
        make_spec(
            models=(new_model,), image="registry.example/scoring:def456", manifest_hash="def456", keys=None
        )
    )
    assert after.url == before.url
    assert target.keys("digits-svc") == KEYS
    assert cluster.store[("namespaced_service", "ml", "digits-svc")] == service_before
    assert json.loads(
        base64.b64decode(cluster.store[("namespaced_secret", "ml", "digits-svc")]["data"]["keys.json"])
    ) == json.loads(base64.b64decode(secret_before["data"]["keys.json"]))
    deployment = cluster.store[("namespaced_deployment", "ml", "digits-svc")]
    assert _container(deployment)["image"] == "registry.example/scoring:def456"
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"][f"{LABEL_PREFIX}/manifest-hash"] == "def456"
    )
    assert after.image == "registry.example/scoring:def456"
    assert after.models[0]["version"] == "4"
    assert "patch namespaced_deployment" in cluster.calls
    assert (
        "create namespaced_service" not in cluster.calls[cluster.calls.index("patch namespaced_deployment") :]
    )


def test_update_of_a_missing_service_is_not_found(target: AksTarget) -> None:
    with pytest.raises(DeploymentNotFound):
        target.update(make_spec())


def _deployment(status: dict[str, Any], replicas: int = 2, generation: int = 1) -> k8s.V1Deployment:
    data = {
        "metadata": {"name": "svc", "generation": generation},
        "spec": {"replicas": replicas, "selector": {}, "template": {}},
        "status": status,
    }
    return k8s.ApiClient()._ApiClient__deserialize(data, "V1Deployment")


def _pod(phase: str, *, waiting: str | None = None, unschedulable: bool = False) -> k8s.V1Pod:
    status: dict[str, Any] = {"phase": phase}
    if waiting:
        status["containerStatuses"] = [
            {
                "name": "scoring",
                "image": "x",
                "imageID": "",
                "ready": False,
                "restartCount": 4,
                "state": {"waiting": {"reason": waiting, "message": "back-off restarting"}},
            }
        ]
    if unschedulable:
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ]
    data = {"metadata": {"name": "svc-abc", "labels": {f"{LABEL_PREFIX}/service": "svc"}}, "status": status}
    return k8s.ApiClient()._ApiClient__deserialize(data, "V1Pod")


AVAILABLE = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}
ROLLED_OUT = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
ROLLING = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}


@pytest.mark.parametrize(
    ("status", "pods", "state", "reason"),
    [
        (
            {
                "observedGeneration": 1,
                "readyReplicas": 2,
                "updatedReplicas": 2,
                "conditions": [AVAILABLE, ROLLED_OUT],
            },
            [_pod("Running")],
            ServiceState.HEALTHY,
            "",
        ),
        (
            {
                "observedGeneration": 1,
                "readyReplicas": 1,
                "updatedReplicas": 1,
                "conditions": [AVAILABLE, ROLLING],
            },
            [_pod("Running")],
            ServiceState.TRANSITIONING,
            "1/2",
        ),
        ({"observedGeneration": 0}, [], ServiceState.TRANSITIONING, ""),
        (
            {"observedGeneration": 1, "conditions": [ROLLING]},
            [_pod("Pending", unschedulable=True)],
            ServiceState.UNSCHEDULABLE,
            "Insufficient nvidia.com/gpu",
        ),
        (
            {"observedGeneration": 1, "conditions": [ROLLING]},
            [_pod("Running", waiting="CrashLoopBackOff")],
            ServiceState.FAILED,
            "CrashLoopBackOff",
        ),
        (
            {"observedGeneration": 1, "conditions": [ROLLING]},
            [_pod("Pending", waiting="ImagePullBackOff")],
            ServiceState.FAILED,
            "ImagePullBackOff",
        ),
        (
            {
                "observedGeneration": 1,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "too slow",
                    }
                ],
            },
            [],
            ServiceState.FAILED,
            "ProgressDeadlineExceeded",
        ),
        (
            {
                "observedGeneration": 1,
                "readyReplicas": 1,
                "updatedReplicas": 2,
                "conditions": [
                    {
                        "type": "Available",
                        "status": "False",
                        "reason": "MinimumReplicasUnavailable",
                        "message": "Deployment does not have minimum availability.",
                    },
                    ROLLED_OUT,
                ],
            },
            [_pod("Running")],
            ServiceState.UNHEALTHY,
            "minimum availability",
        ),
    ],
    ids=[
        "healthy",
        "rolling",
        "not-observed",
        "unschedulable",
        "crashloop",
        "imagepull",
        "deadline",
        "unhealthy",
    ],
)
def test_status_mapping(
    status: dict[str, Any], pods: list[k8s.V1Pod], state: ServiceState, reason: str
) -> None:
    """Deployment conditions and pod phases/conditions map to Azure ML's states (fake objects, no cluster)."""
    result = deployment_status(_deployment(status), pods)
    assert result.state is state
    assert reason in result.reason


def test_status_logs_list_and_delete(target: AksTarget, cluster: FakeCluster) -> None:
    """Status reads pods from the fake API; list filters by model and image; delete removes everything."""
    target.deploy(make_spec())
    target.deploy(
        make_spec(name="other-svc", models=(ModelRef("iris", "1", "/x", "sha256:00"),), image="other:1")
    )
    cluster.set_deployment_status(
        "digits-svc",
        {
            "observedGeneration": 1,
            "readyReplicas": 1,
            "updatedReplicas": 1,
            "conditions": [AVAILABLE, ROLLED_OUT],
        },
    )
    pod = _pod("Running")
    pod.metadata.labels = {f"{LABEL_PREFIX}/service": "digits-svc"}
    cluster.pods = [pod]
    assert target.status("digits-svc").state is ServiceState.HEALTHY
    assert target.get("digits-svc").state is ServiceState.HEALTHY
    assert "svc-abc line 4" in target.logs("digits-svc", tail=5)
    assert [i.name for i in target.list(model="digits")] == ["digits-svc"]
    assert [i.name for i in target.list(image="other:1")] == ["other-svc"]
    assert sorted(i.name for i in target.list()) == ["digits-svc", "other-svc"]
    target.delete("digits-svc")
    assert not [key for key in cluster.store if key[2] == "digits-svc"]
    with pytest.raises(DeploymentNotFound):
        target.delete("digits-svc")
    with pytest.raises(DeploymentNotFound):
        target.status("digits-svc")


def test_get_target_builds_aks_with_injected_clients(cluster: FakeCluster) -> None:
    target = get_target(
        "aks",
        namespace="ml",
        core_v1=cluster,
        apps_v1=cluster,
        autoscaling_v2=cluster,
        policy_v1=cluster,
        service_type="LoadBalancer",
    )
    assert isinstance(target, AksTarget)
    assert _by_kind(target.manifests(make_spec()))["Service"]["spec"]["type"] == "LoadBalancer"
