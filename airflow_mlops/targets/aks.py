"""Kubernetes (AKS or any cluster): a Deployment behind a stable Service.

One service is five objects, all named after it, in one namespace:

* a ``Secret`` holding the keys file (``keys.json``, mounted read-only) and any credential
  environment entries (referenced with ``secretKeyRef``), never plain env or annotations;
* a ``Deployment`` with resources, probes on the scoring health routes, a non-root security
  context and a rolling update of ``maxUnavailable: 0, maxSurge: 1``: a new pod must be ready
  before an old one goes, so updates are zero-downtime;
* a ``Service`` (``ClusterIP`` or ``LoadBalancer``) whose name never changes, so the URL
  survives updates;
* a ``HorizontalPodAutoscaler`` (``autoscaling/v2``) when autoscaling is on;
* a ``PodDisruptionBudget`` so node drains never take the last ready replica.

The deployment's state lives in labels and annotations under
:data:`~airflow_mlops.constants.LABEL_PREFIX`. Clients come from the cncf-kubernetes
provider's :class:`KubernetesHook`, or are injected (tests use a fake control plane).
"""

from __future__ import annotations

import base64
import json
from functools import cached_property
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from airflow_mlops.config import DeploymentConfig
from airflow_mlops.constants import ServiceState
from airflow_mlops.exceptions import DeploymentError, DeploymentNotFound, UpdateFailed
from airflow_mlops.targets._container import (
    CONTAINER_NAME,
    KEYS_FILE_NAME,
    KEYS_MOUNT_DIR,
    LIVENESS_PATH,
    MANAGED_BY,
    READINESS_PATH,
    STATE_CONFIG,
    STATE_IMAGE,
    STATE_MANAGED_BY,
    STATE_MANIFEST_HASH,
    STATE_SERVICE,
    ContainerSpec,
    check_service_name,
    container_spec,
    models_from_state,
)
from airflow_mlops.targets.base import (
    DeploymentTarget,
    ServiceInfo,
    ServiceKeys,
    ServiceSpec,
    ServiceStatus,
)

__all__ = ["AksTarget", "deployment_status"]

#: Container waiting reasons after which waiting longer will not help.
FAILED_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
SERVICE_PORT = 80
RUN_AS_USER = 10001


class AksTarget(DeploymentTarget):
    """Deploy scoring services to a Kubernetes cluster (AKS or any other).

    :param kubernetes_conn_id: cncf-kubernetes connection used when no client is injected.
    :param namespace: namespace for every object (default: the connection's, else ``default``).
    :param service_type: ``ClusterIP`` (in-cluster URL) or ``LoadBalancer`` (external IP).
    :param core_v1: injected ``CoreV1Api`` (tests pass a fake control plane).
    :param apps_v1: injected ``AppsV1Api``.
    :param autoscaling_v2: injected ``AutoscalingV2Api``.
    :param policy_v1: injected ``PolicyV1Api``.
    """

    name = "aks"

    def __init__(
        self,
        kubernetes_conn_id: str = "kubernetes_default",
        namespace: str | None = None,
        *,
        service_type: str = "ClusterIP",
        core_v1: Any = None,
        apps_v1: Any = None,
        autoscaling_v2: Any = None,
        policy_v1: Any = None,
    ) -> None:
        if service_type not in ("ClusterIP", "LoadBalancer"):
            raise DeploymentError(f"service_type must be ClusterIP or LoadBalancer, not {service_type!r}")
        self.kubernetes_conn_id = kubernetes_conn_id
        self._namespace = namespace
        self.service_type = service_type
        self._core_v1, self._apps_v1 = core_v1, apps_v1
        self._autoscaling_v2, self._policy_v1 = autoscaling_v2, policy_v1

    # -- clients -------------------------------------------------------------------------

    @cached_property
    def hook(self) -> Any:
        """Return the cncf-kubernetes provider's hook for ``kubernetes_conn_id``."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    @cached_property
    def namespace(self) -> str:
        """Return the namespace every object lives in."""
        if self._namespace:
            return self._namespace
        if self._core_v1 is not None:
            return "default"
        return self.hook.get_namespace() or "default"

    @cached_property
    def core_v1(self) -> Any:
        return self._core_v1 or self.hook.core_v1_client

    @cached_property
    def apps_v1(self) -> Any:
        return self._apps_v1 or self.hook.apps_v1_client

    @cached_property
    def autoscaling_v2(self) -> Any:
        return self._autoscaling_v2 or k8s.AutoscalingV2Api(self.hook.api_client)

    @cached_property
    def policy_v1(self) -> Any:
        return self._policy_v1 or k8s.PolicyV1Api(self.hook.api_client)

    # -- objects ---------------------------------------------------------------------------

    def manifests(self, spec: ServiceSpec) -> list[dict[str, Any]]:
        """Return the objects :meth:`deploy` creates, as plain dicts (Secret first).

        Keys are generated when ``spec.keys`` is ``None``, so the Secret holds fresh ones.
        """
        objects = self._objects(container_spec(spec, spec.keys or ServiceKeys.generate()), spec.config)
        return [k8s.ApiClient().sanitize_for_serialization(obj) for obj in objects]

    def _objects(self, c: ContainerSpec, config: DeploymentConfig) -> list[Any]:
        objects: list[Any] = [self._secret(c), self._deployment(c, config), self._service(c)]
        if config.autoscale.enabled:
            objects.append(self._hpa(c, config))
        objects.append(self._pdb(c, config))
        return objects

    def _meta(self, c: ContainerSpec, annotations: dict[str, str] | None = None) -> k8s.V1ObjectMeta:
        return k8s.V1ObjectMeta(
            name=c.name, namespace=self.namespace, labels=_labels(c), annotations=annotations or None
        )

    def _secret(self, c: ContainerSpec) -> k8s.V1Secret:
        data = {KEYS_FILE_NAME: c.keys_json, **c.secret_env}
        return k8s.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=self._meta(c),
            type="Opaque",
            data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        )

    def _deployment(self, c: ContainerSpec, config: DeploymentConfig) -> k8s.V1Deployment:
        annotations = {k: v for k, v in c.state.items() if k not in (STATE_SERVICE, STATE_MANAGED_BY)}
        resources = {"cpu": _cpu(c.cpu), "memory": f"{c.memory_mib}Mi"}
        limits = dict(resources)
        if c.gpu:
            limits["nvidia.com/gpu"] = str(c.gpu)
        env = [k8s.V1EnvVar(name=k, value=v) for k, v in sorted(c.env.items())]
        env += [
            k8s.V1EnvVar(
                name=k,
                value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=c.name, key=k)),
            )
            for k in sorted(c.secret_env)
        ]
        container = k8s.V1Container(
            name=CONTAINER_NAME,
            image=c.image,
            image_pull_policy="IfNotPresent",
            ports=[k8s.V1ContainerPort(name="http", container_port=c.port, protocol="TCP")],
            env=env,
            resources=k8s.V1ResourceRequirements(requests=resources, limits=limits),
            liveness_probe=_probe(LIVENESS_PATH, period=10, failures=3),
            readiness_probe=_probe(READINESS_PATH, period=5, failures=2),
            startup_probe=_probe(LIVENESS_PATH, period=5, failures=60),
            volume_mounts=[k8s.V1VolumeMount(name="keys", mount_path=KEYS_MOUNT_DIR, read_only=True)],
            security_context=k8s.V1SecurityContext(
                allow_privilege_escalation=False,
                run_as_non_root=True,
                capabilities=k8s.V1Capabilities(drop=["ALL"]),
            ),
        )
        pod = k8s.V1PodTemplateSpec(
            # The manifest hash on the pod template makes a same-image update still roll pods.
            metadata=k8s.V1ObjectMeta(
                labels=_labels(c),
                annotations={STATE_MANIFEST_HASH: c.state.get(STATE_MANIFEST_HASH, "")},
            ),
            spec=k8s.V1PodSpec(
                containers=[container],
                automount_service_account_token=False,
                termination_grace_period_seconds=30,
                security_context=k8s.V1PodSecurityContext(
                    run_as_non_root=True,
                    run_as_user=RUN_AS_USER,
                    run_as_group=RUN_AS_USER,
                    fs_group=RUN_AS_USER,
                    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
                ),
                volumes=[
                    k8s.V1Volume(
                        name="keys",
                        secret=k8s.V1SecretVolumeSource(
                            secret_name=c.name,
                            items=[k8s.V1KeyToPath(key=KEYS_FILE_NAME, path=KEYS_FILE_NAME)],
                            default_mode=0o440,
                        ),
                    )
                ],
            ),
        )
        return k8s.V1Deployment(
            api_version="apps/v1",
            kind="Deployment",
            metadata=self._meta(c, annotations),
            spec=k8s.V1DeploymentSpec(
                # The HPA owns the replica count when autoscaling is on.
                replicas=None if config.autoscale.enabled else config.replicas,
                selector=k8s.V1LabelSelector(match_labels={STATE_SERVICE: c.name}),
                strategy=k8s.V1DeploymentStrategy(
                    type="RollingUpdate",
                    rolling_update=k8s.V1RollingUpdateDeployment(max_unavailable=0, max_surge=1),
                ),
                min_ready_seconds=0,
                progress_deadline_seconds=600,
                revision_history_limit=5,
                template=pod,
            ),
        )

    def _service(self, c: ContainerSpec) -> k8s.V1Service:
        return k8s.V1Service(
            api_version="v1",
            kind="Service",
            metadata=self._meta(c),
            spec=k8s.V1ServiceSpec(
                type=self.service_type,
                selector={STATE_SERVICE: c.name},
                ports=[k8s.V1ServicePort(name="http", port=SERVICE_PORT, target_port="http", protocol="TCP")],
            ),
        )

    def _hpa(self, c: ContainerSpec, config: DeploymentConfig) -> k8s.V2HorizontalPodAutoscaler:
        auto = config.autoscale
        return k8s.V2HorizontalPodAutoscaler(
            api_version="autoscaling/v2",
            kind="HorizontalPodAutoscaler",
            metadata=self._meta(c),
            spec=k8s.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=k8s.V2CrossVersionObjectReference(
                    api_version="apps/v1", kind="Deployment", name=c.name
                ),
                min_replicas=auto.min_replicas,
                max_replicas=max(auto.max_replicas, auto.min_replicas),
                metrics=[
                    k8s.V2MetricSpec(
                        type="Resource",
                        resource=k8s.V2ResourceMetricSource(
                            name="cpu",
                            target=k8s.V2MetricTarget(
                                type="Utilization", average_utilization=auto.target_utilization
                            ),
                        ),
                    )
                ],
            ),
        )

    def _pdb(self, c: ContainerSpec, config: DeploymentConfig) -> k8s.V1PodDisruptionBudget:
        # One replica may always be evicted (a one-replica service must not block node drains);
        # with more, the budget keeps all but one serving.
        return k8s.V1PodDisruptionBudget(
            api_version="policy/v1",
            kind="PodDisruptionBudget",
            metadata=self._meta(c),
            spec=k8s.V1PodDisruptionBudgetSpec(
                max_unavailable=1, selector=k8s.V1LabelSelector(match_labels={STATE_SERVICE: c.name})
            ),
        )

    # -- operations ----------------------------------------------------------------------

    def deploy(self, spec: ServiceSpec) -> ServiceInfo:
        """Create the Secret, Deployment, Service, HPA and PDB; roll back what was made on failure."""
        c = container_spec(spec, spec.keys or ServiceKeys.generate())
        if self._read_deployment(spec.name) is not None:
            raise DeploymentError(
                f"service {spec.name!r} already exists in {self.namespace}", service=spec.name
            )
        made: list[Any] = []
        try:
            for obj in self._objects(c, spec.config):
                self._create(obj)
                made.append(obj)
        except ApiException as e:
            for done in reversed(made):
                self._delete(done.kind, spec.name)
            raise DeploymentError(
                f"creating {obj.kind} {spec.name!r} failed: {e.status} {e.reason}", service=spec.name
            ) from e
        return self.get(spec.name)

    def update(self, spec: ServiceSpec) -> ServiceInfo:
        """Patch the Deployment's image, env and annotations; the Service and keys stay as they are."""
        current = self._read_deployment(spec.name)
        if current is None:
            raise DeploymentNotFound(
                f"service {spec.name!r} not found in {self.namespace}", service=spec.name
            )
        c = container_spec(spec, self.keys(spec.name))
        body = k8s.ApiClient().sanitize_for_serialization(self._deployment(c, spec.config))
        try:
            if c.secret_env:
                patch = {k: base64.b64encode(v.encode()).decode() for k, v in c.secret_env.items()}
                self.core_v1.patch_namespaced_secret(spec.name, self.namespace, {"data": patch})
            self.apps_v1.patch_namespaced_deployment(spec.name, self.namespace, body)
            self._sync_autoscaler(c, spec.config)
        except ApiException as e:
            raise UpdateFailed(spec.name, f"{e.status} {e.reason}") from e
        return self.get(spec.name)

    def _sync_autoscaler(self, c: ContainerSpec, config: DeploymentConfig) -> None:
        exists = self._read("HorizontalPodAutoscaler", c.name) is not None
        if config.autoscale.enabled:
            hpa = self._hpa(c, config)
            if exists:
                self.autoscaling_v2.replace_namespaced_horizontal_pod_autoscaler(c.name, self.namespace, hpa)
            else:
                self._create(hpa)
        elif exists:
            self._delete("HorizontalPodAutoscaler", c.name)

    def status(self, name: str) -> ServiceStatus:
        """Map the Deployment's conditions and its pods' phases and conditions to a state."""
        deployment = self._require(name)
        pods = self.core_v1.list_namespaced_pod(self.namespace, label_selector=f"{STATE_SERVICE}={name}")
        return deployment_status(deployment, pods.items)

    def logs(self, name: str, tail: int = 100) -> str:
        """Return the last ``tail`` lines of each pod's scoring container."""
        self._require(name)
        pods = self.core_v1.list_namespaced_pod(self.namespace, label_selector=f"{STATE_SERVICE}={name}")
        parts = []
        for pod in pods.items:
            try:
                text = self.core_v1.read_namespaced_pod_log(
                    pod.metadata.name, self.namespace, container=CONTAINER_NAME, tail_lines=tail
                )
            except ApiException as e:
                text = f"(no log: {e.status} {e.reason})"
            parts.append(f"--- pod {pod.metadata.name} ---\n{text}")
        return "\n".join(parts)

    def keys(self, name: str) -> ServiceKeys:
        """Read the keys back from the service's Secret."""
        secret = self._read("Secret", name)
        if secret is None:
            raise DeploymentNotFound(f"service {name!r} not found in {self.namespace}", service=name)
        data = json.loads(base64.b64decode((secret.data or {})[KEYS_FILE_NAME]) or b"{}")
        return ServiceKeys(**data) if data else ServiceKeys.generate()

    def delete(self, name: str) -> None:
        """Delete every object made for the service; fail if none existed."""
        kinds = ("PodDisruptionBudget", "HorizontalPodAutoscaler", "Service", "Deployment", "Secret")
        deleted = [self._delete(kind, name) for kind in kinds]
        if not any(deleted):
            raise DeploymentNotFound(f"service {name!r} not found in {self.namespace}", service=name)

    def list(self, model: str | None = None, image: str | None = None) -> list[ServiceInfo]:
        """List this provider's services by label selector, filtered by model name or image."""
        found = self.apps_v1.list_namespaced_deployment(
            self.namespace, label_selector=f"{STATE_MANAGED_BY}={MANAGED_BY}"
        )
        infos = [self._info(d, deployment_status(d, None)) for d in found.items]
        if model:
            infos = [i for i in infos if any(m.get("name") == model for m in i.models)]
        if image:
            infos = [i for i in infos if i.image == image]
        return infos

    def get(self, name: str) -> ServiceInfo:
        """Return the service's record, with its current state."""
        return self._info(self._require(name), self.status(name))

    # -- helpers ---------------------------------------------------------------------------

    def url(self, name: str) -> str:
        """Return the service's stable URL (external IP for a ready ``LoadBalancer``)."""
        service = self._read("Service", name)
        ingress = None
        if service is not None and service.status and service.status.load_balancer:
            ingress = (service.status.load_balancer.ingress or [None])[0]
        if ingress is not None:
            return f"http://{ingress.ip or ingress.hostname}:{SERVICE_PORT}"
        return f"http://{name}.{self.namespace}.svc.cluster.local:{SERVICE_PORT}"

    def _info(self, deployment: Any, status: ServiceStatus) -> ServiceInfo:
        annotations = deployment.metadata.annotations or {}
        name = deployment.metadata.name
        config = json.loads(annotations.get(STATE_CONFIG) or "{}")
        spec = deployment.spec
        return ServiceInfo(
            name=name,
            target=self.name,
            url=self.url(name),
            state=status.state,
            models=models_from_state(annotations),
            image=annotations.get(STATE_IMAGE) or None,
            manifest_hash=annotations.get(STATE_MANIFEST_HASH) or None,
            auth_enabled=config.get("auth_enabled", True),
            details={
                "namespace": self.namespace,
                "reason": status.reason,
                "replicas": spec.replicas if spec else None,
                "ready_replicas": (deployment.status.ready_replicas or 0) if deployment.status else 0,
            },
        )

    def _api(self, kind: str) -> tuple[Any, str]:
        return {
            "Secret": (self.core_v1, "namespaced_secret"),
            "Service": (self.core_v1, "namespaced_service"),
            "Deployment": (self.apps_v1, "namespaced_deployment"),
            "HorizontalPodAutoscaler": (self.autoscaling_v2, "namespaced_horizontal_pod_autoscaler"),
            "PodDisruptionBudget": (self.policy_v1, "namespaced_pod_disruption_budget"),
        }[kind]

    def _create(self, obj: Any) -> Any:
        api, suffix = self._api(obj.kind)
        return getattr(api, f"create_{suffix}")(self.namespace, obj)

    def _read(self, kind: str, name: str) -> Any:
        api, suffix = self._api(kind)
        try:
            return getattr(api, f"read_{suffix}")(name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise DeploymentError(
                f"reading {kind} {name!r} failed: {e.status} {e.reason}", service=name
            ) from e

    def _delete(self, kind: str, name: str) -> bool:
        api, suffix = self._api(kind)
        try:
            getattr(api, f"delete_{suffix}")(name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return False
            raise DeploymentError(
                f"deleting {kind} {name!r} failed: {e.status} {e.reason}", service=name
            ) from e
        return True

    def _read_deployment(self, name: str) -> Any:
        check_service_name(name)
        return self._read("Deployment", name)

    def _require(self, name: str) -> Any:
        deployment = self._read_deployment(name)
        if deployment is None:
            raise DeploymentNotFound(f"service {name!r} not found in {self.namespace}", service=name)
        return deployment


def deployment_status(deployment: Any, pods: list[Any] | None) -> ServiceStatus:
    """Map a Deployment (and, when given, its pods) to a :class:`ServiceState`.

    Failed first (a pod stuck in ``CrashLoopBackOff``/``ImagePullBackOff``, or the rollout past
    its progress deadline), then ``Unschedulable`` (a pending pod the scheduler cannot place),
    then ``Healthy`` (available, every desired replica updated and ready), ``Transitioning``
    (a rollout still under way), and ``Unhealthy`` for everything else.
    """
    for pod in pods or []:
        pod_status = pod.status
        for cs in (pod_status.container_statuses or []) if pod_status else []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason in FAILED_REASONS:
                reason = f"pod {pod.metadata.name}: {waiting.reason}"
                return ServiceStatus(
                    ServiceState.FAILED, f"{reason}: {waiting.message}" if waiting.message else reason
                )
    status = deployment.status or k8s.V1DeploymentStatus()
    conditions = {c.type: c for c in status.conditions or []}
    progressing = conditions.get("Progressing")
    if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
        return ServiceStatus(
            ServiceState.FAILED, f"ProgressDeadlineExceeded: {progressing.message or ''}".strip()
        )
    for pod in pods or []:
        if pod.status is None or pod.status.phase != "Pending":
            continue
        for cond in pod.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                return ServiceStatus(
                    ServiceState.UNSCHEDULABLE, f"pod {pod.metadata.name}: {cond.message or ''}"
                )
    desired = deployment.spec.replicas if deployment.spec and deployment.spec.replicas is not None else 1
    ready, updated = status.ready_replicas or 0, status.updated_replicas or 0
    generation_seen = (status.observed_generation or 0) >= (deployment.metadata.generation or 0)
    available = conditions.get("Available")
    if (
        available is not None
        and available.status == "True"
        and generation_seen
        and ready >= desired == updated
    ):
        return ServiceStatus(ServiceState.HEALTHY)
    rollout_done = progressing is not None and progressing.reason == "NewReplicaSetAvailable"
    if not generation_seen or (progressing is not None and progressing.status == "True" and not rollout_done):
        return ServiceStatus(ServiceState.TRANSITIONING, f"{ready}/{desired} replicas ready")
    if progressing is None and available is None:
        return ServiceStatus(ServiceState.TRANSITIONING, "rollout not yet observed")
    reason = (available.message if available is not None else "") or f"{ready}/{desired} replicas ready"
    return ServiceStatus(ServiceState.UNHEALTHY, reason)


def _labels(c: ContainerSpec) -> dict[str, str]:
    return {STATE_SERVICE: c.name, STATE_MANAGED_BY: MANAGED_BY, "app.kubernetes.io/name": c.name}


def _cpu(cores: float) -> str:
    return f"{round(cores * 1000)}m"


def _probe(path: str, *, period: int, failures: int) -> k8s.V1Probe:
    return k8s.V1Probe(
        http_get=k8s.V1HTTPGetAction(path=path, port="http", scheme="HTTP"),
        period_seconds=period,
        timeout_seconds=2,
        failure_threshold=failures,
        success_threshold=1,
    )
