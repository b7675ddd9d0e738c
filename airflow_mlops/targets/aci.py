"""Azure Container Instances: one container group per service, reached through a DNS label.

The group runs the shared scoring container (:mod:`airflow_mlops.targets._container`): its
keys file comes from a ``secret`` volume mounted read-only (never plain env), credential
env entries are ``secureValue`` s, probes hit the scoring health routes, and the public IP
carries a DNS label, so the URL ``http://<label>.<region>.azurecontainer.io:5001`` is stable.
The deployment's state is kept in the group's tags.

ACI never returns secret volume contents or secure values on a read, so the keys are also
written to a :class:`KeyStore` (default: a 0600 file under ``$MLOPS_HOME/aci-keys``; plug in
a Key Vault backed one for multi-worker set-ups).

Updates: ACI has no rolling update. :meth:`AciTarget.update` re-sends the group under the same
name, DNS label and keys; ACI restarts the container, so requests fail for the few seconds
the new container needs to load the model. Changing CPU, memory or GPU is not allowed in
place by ACI: the group is then deleted and re-created (a longer gap, same URL and keys).
Put the service behind AKS when an update must be zero-downtime.
"""

from __future__ import annotations

import base64
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.containerinstance import models as aci

from airflow_mlops.constants import ServiceState, mlops_home
from airflow_mlops.exceptions import ConfigError, DeploymentError, DeploymentNotFound, UpdateFailed
from airflow_mlops.targets._container import (
    CONTAINER_NAME,
    KEYS_FILE_NAME,
    KEYS_MOUNT_DIR,
    LIVENESS_PATH,
    MANAGED_BY,
    READINESS_PATH,
    STATE_IMAGE,
    STATE_MANAGED_BY,
    STATE_MANIFEST_HASH,
    STATE_MODELS,
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

__all__ = ["AciTarget", "FileKeyStore", "KeyStore", "group_status"]

# ARM tag names may not contain '/', and values are at most 256 characters.
TAG_AUTH = "io.airflow-mlops.auth"
_TAG_MAX = 256
_TRANSITIONING = frozenset({"Accepted", "Creating", "Pending", "Updating", "Repairing", "Deleting"})
_CAPACITY_HINTS = (
    "ServiceUnavailable",
    "InsufficientCapacity",
    "SkuNotAvailable",
    "not available in location",
)


def _tag(key: str) -> str:
    return key.replace("/", ".")


class KeyStore(Protocol):
    """Where a target keeps keys that its platform will not give back."""

    def get(self, name: str) -> ServiceKeys | None: ...

    def put(self, name: str, keys: ServiceKeys) -> None: ...

    def delete(self, name: str) -> None: ...


class FileKeyStore:
    """Keep keys in owner-only JSON files, one per service (the embedded default).

    :param folder: where the files live (default ``$MLOPS_HOME/aci-keys``).
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder or Path(mlops_home()) / "aci-keys")

    def _path(self, name: str) -> Path:
        return self.folder / f"{check_service_name(name)}.json"

    def get(self, name: str) -> ServiceKeys | None:
        try:
            return ServiceKeys(**json.loads(self._path(name).read_text()))
        except FileNotFoundError:
            return None

    def put(self, name: str, keys: ServiceKeys) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._path(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(keys.to_dict(), f)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


class AciTarget(DeploymentTarget):
    """Deploy scoring services as Azure Container Instances groups.

    :param resource_group: resource group that holds the groups.
    :param location: Azure region of new groups.
    :param azure_conn_id: the Azure provider's ``azure_container_instances`` connection, used
        (through ``AzureContainerInstanceHook``) when no client is injected.
    :param dns_label_prefix: prefix of each group's DNS label (labels are unique per region).
    :param client: injected ``ContainerInstanceManagementClient`` (tests pass a fake).
    :param key_store: where keys are kept, since ACI never returns secret contents.
    """

    name = "aci"

    def __init__(
        self,
        resource_group: str,
        location: str = "westeurope",
        azure_conn_id: str = "azure_container_instances_default",
        *,
        dns_label_prefix: str = "",
        client: Any = None,
        key_store: KeyStore | None = None,
    ) -> None:
        self.resource_group = resource_group
        self.location = location
        self.azure_conn_id = azure_conn_id
        self.dns_label_prefix = dns_label_prefix
        self._client = client
        self.key_store: KeyStore = key_store or FileKeyStore()

    @cached_property
    def client(self) -> Any:
        """Return the container instance management client (injected, or from the Azure provider)."""
        if self._client is not None:
            return self._client
        from airflow.providers.microsoft.azure.hooks.container_instance import AzureContainerInstanceHook

        return AzureContainerInstanceHook(azure_conn_id=self.azure_conn_id).connection

    # -- the request -------------------------------------------------------------------------

    def container_group(self, spec: ServiceSpec, keys: ServiceKeys | None = None) -> aci.ContainerGroup:
        """Build the ``ContainerGroup`` that :meth:`deploy` sends (keys generated when not given)."""
        c = container_spec(spec, keys or spec.keys or ServiceKeys.generate())
        return self._group(c, auth=spec.config.auth_enabled)

    def manifests(self, spec: ServiceSpec) -> list[dict[str, Any]]:
        """Return the request body (the REST shape) :meth:`deploy` sends, as a one-item list."""
        return [self.container_group(spec).serialize()]

    def _group(self, c: ContainerSpec, *, auth: bool) -> aci.ContainerGroup:
        env = [aci.EnvironmentVariable(name=k, value=v) for k, v in sorted(c.env.items())]
        env += [aci.EnvironmentVariable(name=k, secure_value=v) for k, v in sorted(c.secret_env.items())]
        requests = aci.ResourceRequests(cpu=c.cpu, memory_in_gb=c.memory_gb)
        if c.gpu:
            requests.gpu = aci.GpuResource(count=c.gpu, sku="V100")
        container = aci.Container(
            name=CONTAINER_NAME,
            image=c.image,
            ports=[aci.ContainerPort(port=c.port, protocol="TCP")],
            environment_variables=env,
            resources=aci.ResourceRequirements(requests=requests),
            volume_mounts=[aci.VolumeMount(name="keys", mount_path=KEYS_MOUNT_DIR, read_only=True)],
            liveness_probe=_probe(LIVENESS_PATH, c.port, period=10, failures=3, delay=30),
            readiness_probe=_probe(READINESS_PATH, c.port, period=5, failures=2, delay=5),
        )
        tags = {_tag(k): v for k, v in c.state.items() if k in _TAGGED}
        tags[TAG_AUTH] = "on" if auth else "off"
        too_long = [k for k, v in tags.items() if len(v) > _TAG_MAX]
        if too_long:
            raise ConfigError(
                f"service {c.name!r}: ACI tag values are limited to {_TAG_MAX} chars: {too_long}"
            )
        return aci.ContainerGroup(
            location=self.location,
            tags=tags,
            containers=[container],
            os_type="Linux",
            # Always: a crashed scoring server comes back; the liveness probe restarts a hung one.
            restart_policy="Always",
            ip_address=aci.IpAddress(
                type="Public",
                ports=[aci.Port(port=c.port, protocol="TCP")],
                dns_name_label=self._dns_label(c.name),
            ),
            volumes=[
                aci.Volume(
                    name="keys",
                    secret={KEYS_FILE_NAME: base64.b64encode(c.keys_json.encode()).decode()},
                )
            ],
        )

    def _dns_label(self, name: str) -> str:
        return f"{self.dns_label_prefix}{name}"

    # -- operations ----------------------------------------------------------------------------

    def deploy(self, spec: ServiceSpec) -> ServiceInfo:
        """Create the container group; fail if one of that name exists."""
        check_service_name(spec.name)
        if self._find(spec.name) is not None:
            raise DeploymentError(
                f"service {spec.name!r} already exists in {self.resource_group}", service=spec.name
            )
        keys = spec.keys or ServiceKeys.generate()
        group = self.container_group(spec, keys)
        self.key_store.put(spec.name, keys)
        try:
            self.client.container_groups.begin_create_or_update(self.resource_group, spec.name, group)
        except HttpResponseError as e:
            self.key_store.delete(spec.name)
            raise DeploymentError(f"ACI refused service {spec.name!r}: {e.message}", service=spec.name) from e
        return self.get(spec.name)

    def update(self, spec: ServiceSpec) -> ServiceInfo:
        """Re-send the group under the same name, DNS label and keys (see the module notes on the gap)."""
        current = self._require(spec.name)
        group = self.container_group(spec, self.keys(spec.name))
        try:
            if _resources(current) != _resources(group):
                # ACI refuses CPU/memory/GPU changes in place: delete, wait, re-create.
                self.client.container_groups.begin_delete(self.resource_group, spec.name).result()
            self.client.container_groups.begin_create_or_update(self.resource_group, spec.name, group)
        except HttpResponseError as e:
            raise UpdateFailed(spec.name, f"ACI refused the update: {e.message}") from e
        return self.get(spec.name)

    def status(self, name: str) -> ServiceStatus:
        """Map the group's provisioning state, instance view and events to a state."""
        return group_status(self._require(name))

    def logs(self, name: str, tail: int = 100) -> str:
        """Return the scoring container's last ``tail`` log lines."""
        self._require(name)
        logs = self.client.containers.list_logs(self.resource_group, name, CONTAINER_NAME, tail=tail)
        return logs.content or ""

    def keys(self, name: str) -> ServiceKeys:
        """Return the keys from the key store (ACI itself never returns them)."""
        keys = self.key_store.get(name)
        if keys is None:
            self._require(name)
            raise DeploymentError(f"keys of service {name!r} are not in the key store", service=name)
        return keys

    def delete(self, name: str) -> None:
        """Delete the container group, wait for it to go, and forget its keys."""
        self._require(name)
        self.client.container_groups.begin_delete(self.resource_group, name).result()
        self.key_store.delete(name)

    def list(self, model: str | None = None, image: str | None = None) -> list[ServiceInfo]:
        """List this provider's groups in the resource group, filtered by model name or image."""
        groups = self.client.container_groups.list_by_resource_group(self.resource_group)
        infos = [
            self._info(g, group_status(g))
            for g in groups
            if (g.tags or {}).get(_tag(STATE_MANAGED_BY)) == MANAGED_BY
        ]
        if model:
            infos = [i for i in infos if any(m.get("name") == model for m in i.models)]
        if image:
            infos = [i for i in infos if i.image == image]
        return infos

    def get(self, name: str) -> ServiceInfo:
        """Return the service's record, with its current state."""
        group = self._require(name)
        return self._info(group, group_status(group))

    # -- helpers -------------------------------------------------------------------------------

    def _info(self, group: aci.ContainerGroup, status: ServiceStatus) -> ServiceInfo:
        tags = {k: (group.tags or {}).get(_tag(k)) for k in _TAGGED}
        ip = group.ip_address
        host = (ip.fqdn if ip else None) or f"{self._dns_label(group.name)}.{self.location}.azurecontainer.io"
        port = ip.ports[0].port if ip and ip.ports else 5001
        return ServiceInfo(
            name=group.name,
            target=self.name,
            url=f"http://{host}:{port}",
            state=status.state,
            models=models_from_state({STATE_MODELS: tags.get(STATE_MODELS)}),
            image=tags.get(STATE_IMAGE) or None,
            manifest_hash=tags.get(STATE_MANIFEST_HASH) or None,
            auth_enabled=(group.tags or {}).get(TAG_AUTH, "on") == "on",
            details={
                "resource_group": self.resource_group,
                "reason": status.reason,
                "ip": ip.ip if ip else None,
            },
        )

    def _find(self, name: str) -> aci.ContainerGroup | None:
        try:
            return self.client.container_groups.get(self.resource_group, name)
        except ResourceNotFoundError:
            return None

    def _require(self, name: str) -> aci.ContainerGroup:
        check_service_name(name)
        group = self._find(name)
        if group is None:
            raise DeploymentNotFound(f"service {name!r} not found in {self.resource_group}", service=name)
        return group


_TAGGED = (STATE_SERVICE, STATE_MANAGED_BY, STATE_MODELS, STATE_IMAGE, STATE_MANIFEST_HASH)


def group_status(group: aci.ContainerGroup) -> ServiceStatus:
    """Map a container group to a :class:`ServiceState`.

    Provisioning still under way is ``Transitioning``; a failed provisioning is ``Unschedulable``
    when Azure lacks capacity, else ``Failed`` with the last warning event; a provisioned group
    is ``Healthy`` when its scoring container runs, ``Failed`` when the container is stuck
    (crash loop, image pull), and ``Unhealthy`` otherwise (stopped, terminated, waiting).
    """
    provisioning = group.provisioning_state or "Pending"
    containers = group.containers or []
    view = containers[0].instance_view if containers else None
    events = [
        *(group.instance_view.events or [] if group.instance_view else []),
        *(view.events or [] if view else []),
    ]
    warning = next((e for e in reversed(events) if (e.type or "").lower() == "warning"), None)
    event_text = f"{warning.name}: {warning.message}" if warning is not None else ""
    if provisioning in _TRANSITIONING:
        return ServiceStatus(ServiceState.TRANSITIONING, f"provisioning {provisioning}")
    if provisioning != "Succeeded":
        reason = event_text or f"provisioning {provisioning}"
        if any(hint.lower() in reason.lower() for hint in _CAPACITY_HINTS):
            return ServiceStatus(ServiceState.UNSCHEDULABLE, reason)
        return ServiceStatus(ServiceState.FAILED, reason)
    current = view.current_state if view else None
    state = current.state if current else None
    detail = (current.detail_status or "") if current else ""
    if state == "Running":
        return ServiceStatus(ServiceState.HEALTHY)
    if state == "Waiting" and any(s in detail for s in ("CrashLoopBackOff", "ImagePull", "ErrImagePull")):
        return ServiceStatus(ServiceState.FAILED, detail)
    if state == "Waiting" and warning is not None and (warning.name or "") == "Failed":
        return ServiceStatus(ServiceState.FAILED, event_text)
    if state is None:
        return ServiceStatus(ServiceState.TRANSITIONING, "container not started yet")
    group_state = group.instance_view.state if group.instance_view else None
    return ServiceStatus(
        ServiceState.UNHEALTHY,
        f"container {state}{': ' + detail if detail else ''}"
        + (f" (group {group_state})" if group_state else ""),
    )


def _resources(group: aci.ContainerGroup) -> list[tuple[Any, ...]]:
    out = []
    for c in group.containers or []:
        r = c.resources.requests if c.resources else None
        gpu = r.gpu.count if r is not None and r.gpu is not None else 0
        out.append((float(r.cpu), float(r.memory_in_gb), gpu) if r is not None else (None, None, gpu))
    return out


def _probe(path: str, port: int, *, period: int, failures: int, delay: int) -> aci.ContainerProbe:
    return aci.ContainerProbe(
        http_get=aci.ContainerHttpGet(path=path, port=port, scheme="http"),
        initial_delay_seconds=delay,
        period_seconds=period,
        failure_threshold=failures,
        success_threshold=1,
        timeout_seconds=2,
    )
