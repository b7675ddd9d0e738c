"""Azure IoT Edge: the scoring container as a module in a device's deployment manifest.

:meth:`EdgeTarget.manifests` returns the manifest (``modulesContent`` with ``$edgeAgent``:
runtime, the ``edgeAgent``/``edgeHub`` system modules and the scoring module; and
``$edgeHub`` routes). Docker create options travel as a JSON *string*, split into chunks of
at most 512 characters (``createOptions``, ``createOptions01`` ... ``createOptions07``: at most
4 KiB), the way the edge agent reads them.

Keys: IoT Edge has no secret store, so the keys file is written on the device by its
operator and bind-mounted read-only from ``host_keys_dir``; it never travels in the
manifest or the module twin. The state (models, image, manifest hash) rides in the module's
``$edgeAgent`` entry (``env`` is visible in the twin, so no credential goes there either).

The IoT Hub service SDK is not a dependency: deploy/update/status go through an injected
:class:`EdgeClient` (``apply_configuration`` and ``get_module_twin``), which a thin wrapper
around the IoT Hub service API's "apply configuration on device" and "get module twin" calls
satisfies.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from airflow_mlops.constants import ServiceState
from airflow_mlops.exceptions import ConfigError, DeploymentError, DeploymentNotFound
from airflow_mlops.targets._container import (
    KEYS_FILE_NAME,
    KEYS_MOUNT_DIR,
    STATE_IMAGE,
    STATE_MANIFEST_HASH,
    STATE_MODELS,
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

__all__ = ["CREATE_OPTIONS_CHUNK", "EdgeClient", "EdgeTarget", "join_create_options", "split_create_options"]

#: The edge agent reads ``createOptions`` in chunks of at most 512 characters, at most 8 of them.
CREATE_OPTIONS_CHUNK = 512
CREATE_OPTIONS_MAX_CHUNKS = 8
EDGE_RUNTIME_VERSION = "1.5"
_STATE_ENV = {STATE_MODELS: "MLOPS_STATE_MODELS", STATE_IMAGE: "MLOPS_STATE_IMAGE"}
_RUNTIME_STATES = {
    "running": ServiceState.HEALTHY,
    "backoff": ServiceState.FAILED,
    "failed": ServiceState.FAILED,
    "stopped": ServiceState.UNHEALTHY,
    "dead": ServiceState.FAILED,
    "unknown": ServiceState.TRANSITIONING,
}


class EdgeClient(Protocol):
    """What EdgeTarget needs from IoT Hub (a real client wraps the IoT Hub service API)."""

    def apply_configuration(self, device_id: str, manifest: dict[str, Any]) -> None:
        """Set the device's modules to ``manifest`` (``{"modulesContent": {...}}``)."""

    def get_module_twin(self, device_id: str, module_id: str) -> dict[str, Any]:
        """Return a module twin (``{"properties": {"desired": ..., "reported": ...}}``)."""


def split_create_options(options: dict[str, Any]) -> dict[str, str]:
    """Stringify Docker create options and split them into the edge agent's chunk fields."""
    text = json.dumps(options, separators=(",", ":"), sort_keys=True)
    chunks = [text[i : i + CREATE_OPTIONS_CHUNK] for i in range(0, len(text), CREATE_OPTIONS_CHUNK)]
    if len(chunks) > CREATE_OPTIONS_MAX_CHUNKS:
        raise ConfigError(f"createOptions is {len(text)} characters; IoT Edge takes at most 4096")
    return {("createOptions" if i == 0 else f"createOptions{i:02d}"): chunk for i, chunk in enumerate(chunks)}


def join_create_options(settings: dict[str, Any]) -> dict[str, Any]:
    """Read chunked create options back into a dict (the inverse of :func:`split_create_options`)."""
    keys = sorted(k for k in settings if k.startswith("createOptions"))
    return json.loads("".join(settings[k] for k in keys)) if keys else {}


class EdgeTarget(DeploymentTarget):
    """Deploy a scoring service as a module on one IoT Edge device.

    :param device_id: the IoT Edge device.
    :param client: an :class:`EdgeClient` (required for deploy/update/status; not for manifests).
    :param host_keys_dir: folder on the device holding ``<service>/keys.json``.
    :param host_port: port on the device the scoring port is published on.
    :param device_host: name the device is reached by, for the service URL.
    """

    name = "edge"

    def __init__(
        self,
        device_id: str,
        client: EdgeClient | None = None,
        *,
        host_keys_dir: str = "/etc/airflow-mlops/keys",
        host_port: int = 5001,
        device_host: str | None = None,
    ) -> None:
        self.device_id = device_id
        self._client = client
        self.host_keys_dir = host_keys_dir.rstrip("/")
        self.host_port = host_port
        self.device_host = device_host or device_id

    @property
    def client(self) -> EdgeClient:
        if self._client is None:
            raise ConfigError("EdgeTarget needs an IoT Hub client (EdgeClient) to talk to a device")
        return self._client

    def manifests(self, spec: ServiceSpec) -> list[dict[str, Any]]:
        """Return the deployment manifest ``{"modulesContent": {...}}`` as a one-item list."""
        return [self._manifest(container_spec(spec, spec.keys))]

    def _module(self, c: ContainerSpec) -> dict[str, Any]:
        if c.secret_env:
            raise ConfigError(
                f"service {c.name!r}: IoT Edge module env is visible in the twin; "
                f"do not pass credentials ({', '.join(sorted(c.secret_env))})"
            )
        options = {
            "ExposedPorts": {f"{c.port}/tcp": {}},
            "HostConfig": {
                "PortBindings": {f"{c.port}/tcp": [{"HostPort": str(self.host_port)}]},
                "Memory": c.memory_mib * 1024 * 1024,
                "NanoCpus": int(c.cpu * 1e9),
                "Binds": [f"{self.host_keys_dir}/{c.name}:{KEYS_MOUNT_DIR}:ro"],
            },
        }
        env = {k: {"value": v} for k, v in sorted(c.env.items())}
        for key, env_name in _STATE_ENV.items():
            env[env_name] = {"value": c.state.get(key, "")}
        if STATE_MANIFEST_HASH in c.state:
            env["MLOPS_STATE_MANIFEST_HASH"] = {"value": c.state[STATE_MANIFEST_HASH]}
        return {
            "version": "1.0",
            "type": "docker",
            "status": "running",
            "restartPolicy": "always",
            "startupOrder": 10,
            "settings": {"image": c.image, **split_create_options(options)},
            "env": env,
        }

    def _manifest(self, c: ContainerSpec) -> dict[str, Any]:
        system = {
            "edgeAgent": {
                "type": "docker",
                "settings": {"image": f"mcr.microsoft.com/azureiotedge-agent:{EDGE_RUNTIME_VERSION}"},
            },
            "edgeHub": {
                "type": "docker",
                "status": "running",
                "restartPolicy": "always",
                "startupOrder": 0,
                "settings": {
                    "image": f"mcr.microsoft.com/azureiotedge-hub:{EDGE_RUNTIME_VERSION}",
                    **split_create_options(
                        {
                            "HostConfig": {
                                "PortBindings": {
                                    p: [{"HostPort": p.split("/")[0]}]
                                    for p in ("443/tcp", "5671/tcp", "8883/tcp")
                                }
                            }
                        }
                    ),
                },
            },
        }
        return {
            "modulesContent": {
                "$edgeAgent": {
                    "properties.desired": {
                        "schemaVersion": "1.1",
                        "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
                        "systemModules": system,
                        "modules": {c.name: self._module(c)},
                    }
                },
                "$edgeHub": {
                    "properties.desired": {
                        "schemaVersion": "1.1",
                        "routes": {
                            f"{c.name.replace('-', '_')}ToUpstream": (
                                f"FROM /messages/modules/{c.name}/outputs/* INTO $upstream"
                            )
                        },
                        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
                    }
                },
            }
        }

    # -- operations ----------------------------------------------------------------------------

    def deploy(self, spec: ServiceSpec) -> ServiceInfo:
        """Apply the manifest to the device; fail if the module already runs there."""
        check_service_name(spec.name)
        if self._agent_module(spec.name) is not None:
            raise DeploymentError(
                f"module {spec.name!r} already on device {self.device_id}", service=spec.name
            )
        self._apply(spec)
        return self.get(spec.name)

    def update(self, spec: ServiceSpec) -> ServiceInfo:
        """Re-apply the manifest; the edge agent recreates the module (same port, same keys file)."""
        if self._agent_module(spec.name) is None:
            raise DeploymentNotFound(
                f"module {spec.name!r} not on device {self.device_id}", service=spec.name
            )
        self._apply(spec)
        return self.get(spec.name)

    def _apply(self, spec: ServiceSpec) -> None:
        # Keys live on the device (host_keys_dir); none are generated or sent here.
        self.client.apply_configuration(self.device_id, self.manifests(spec)[0])

    def status(self, name: str) -> ServiceStatus:
        """Map the module's reported ``runtimeStatus`` (from ``$edgeAgent``) to a state."""
        desired = self._agent_module(name)
        if desired is None:
            raise DeploymentNotFound(f"module {name!r} not on device {self.device_id}", service=name)
        twin = self.client.get_module_twin(self.device_id, "$edgeAgent")
        reported = twin.get("properties", {}).get("reported", {}).get("modules", {}).get(name)
        if not reported:
            return ServiceStatus(ServiceState.TRANSITIONING, "module not reported by the edge agent yet")
        if reported.get("settings", {}).get("image") not in (None, desired.get("settings", {}).get("image")):
            return ServiceStatus(ServiceState.TRANSITIONING, "edge agent still runs the previous image")
        runtime = str(reported.get("runtimeStatus", "unknown")).lower()
        state = _RUNTIME_STATES.get(runtime, ServiceState.UNHEALTHY)
        reason = "" if state is ServiceState.HEALTHY else f"runtimeStatus {runtime}"
        if reported.get("lastExitTime") and state is not ServiceState.HEALTHY:
            reason += f", last exit {reported['lastExitTime']} (code {reported.get('exitCode')})"
        return ServiceStatus(state, reason)

    def logs(self, name: str, tail: int = 100) -> str:
        """Edge module logs are read on the device (``iotedge logs``); not through the twin."""
        raise DeploymentError(
            f"logs of module {name!r} are on device {self.device_id}: "
            f"run `iotedge logs {name} --tail {tail}` there",
            service=name,
        )

    def keys(self, name: str) -> ServiceKeys:
        """Keys of an Edge module live only on the device; they are never read back."""
        raise DeploymentError(
            f"keys of module {name!r} are in {self.host_keys_dir}/{name}/{KEYS_FILE_NAME} on the device",
            service=name,
        )

    def delete(self, name: str) -> None:
        """Re-apply the device's manifest without the module."""
        twin = self.client.get_module_twin(self.device_id, "$edgeAgent")
        desired = twin.get("properties", {}).get("desired", {})
        modules = dict(desired.get("modules", {}))
        if modules.pop(name, None) is None:
            raise DeploymentNotFound(f"module {name!r} not on device {self.device_id}", service=name)
        manifest = {
            "modulesContent": {
                "$edgeAgent": {"properties.desired": {**_plain(desired), "modules": modules}},
                "$edgeHub": {
                    "properties.desired": _plain(
                        self.client.get_module_twin(self.device_id, "$edgeHub")
                        .get("properties", {})
                        .get("desired", {})
                    )
                },
            }
        }
        self.client.apply_configuration(self.device_id, manifest)

    def list(self, model: str | None = None, image: str | None = None) -> list[ServiceInfo]:
        """List the device's scoring modules, filtered by model name or image."""
        twin = self.client.get_module_twin(self.device_id, "$edgeAgent")
        modules = twin.get("properties", {}).get("desired", {}).get("modules", {})
        infos = [self.get(name) for name, m in modules.items() if "MLOPS_STATE_MODELS" in m.get("env", {})]
        if model:
            infos = [i for i in infos if any(m.get("name") == model for m in i.models)]
        if image:
            infos = [i for i in infos if i.image == image]
        return infos

    def get(self, name: str) -> ServiceInfo:
        """Return the module's record, with its current state."""
        module = self._agent_module(name)
        if module is None:
            raise DeploymentNotFound(f"module {name!r} not on device {self.device_id}", service=name)
        env = {k: v.get("value") for k, v in module.get("env", {}).items()}
        status = self.status(name)
        return ServiceInfo(
            name=name,
            target=self.name,
            url=f"http://{self.device_host}:{self.host_port}",
            state=status.state,
            models=models_from_state({STATE_MODELS: env.get("MLOPS_STATE_MODELS")}),
            image=module.get("settings", {}).get("image"),
            manifest_hash=env.get("MLOPS_STATE_MANIFEST_HASH"),
            auth_enabled=env.get("MLOPS_AUTH") != "off",
            details={"device_id": self.device_id, "reason": status.reason},
        )

    def _agent_module(self, name: str) -> dict[str, Any] | None:
        check_service_name(name)
        twin = self.client.get_module_twin(self.device_id, "$edgeAgent")
        return twin.get("properties", {}).get("desired", {}).get("modules", {}).get(name)


def _plain(desired: dict[str, Any]) -> dict[str, Any]:
    # Twin metadata ($metadata, $version) is added by IoT Hub and must not be sent back.
    return {k: v for k, v in desired.items() if not k.startswith("$")}
