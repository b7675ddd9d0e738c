"""Docker target: a scoring image as a container behind an HAProxy gateway, on a local engine.

Per service ``svc`` the target makes::

    network   mlops-svc                  a bridge network of its own
    container mlops-svc-gateway          HAProxy, publishing 127.0.0.1:<port> (the stable URL)
    container mlops-svc-<slot>-<rev>     the scoring image, network alias <slot> (blue|green)
    folder    $MLOPS_HOME/docker/svc/    keys.json (0600, bind-mounted read-only) and gateway/

Everything else a later task needs is on the containers as labels (service, models,
image, manifest hash, config, port, slot, created): ``status``/``list``/``update``/
``delete`` work from any process. Keys live only in the mounted file, never in env,
labels or logs.

**Updates** move traffic through the gateway (see :mod:`airflow_mlops.targets._gateway`):
the new container starts in the free slot, HAProxy checks it until it is ready, then the
slots flip over HAProxy's runtime API, the old container drains (in-flight requests
finish, then SIGTERM lets it finish its own queue and flush collected data) and is
removed. The URL and keys do not change. A new container that does not become ready is
removed and :class:`~airflow_mlops.exceptions.UpdateFailed` carries its log tail; the old
one never stopped serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx

from airflow_mlops.config import DeploymentConfig
from airflow_mlops.constants import DEFAULT_SCORING_PORT, LABEL_PREFIX, ServiceState, mlops_home
from airflow_mlops.exceptions import ConfigError, DeploymentError, DeploymentNotFound, UpdateFailed
from airflow_mlops.images.builder import LABEL_MANIFEST_HASH, LABEL_MODELS
from airflow_mlops.images.client import docker_client
from airflow_mlops.images.context import IMAGE_USER
from airflow_mlops.targets import _gateway as gw
from airflow_mlops.targets._container import (
    KEYS_FILE_NAME,
    KEYS_MOUNT_DIR,
    MANAGED_BY,
    STATE_CONFIG,
    STATE_IMAGE,
    STATE_MANAGED_BY,
    STATE_MANIFEST_HASH,
    STATE_SERVICE,
    check_service_name,
    container_spec,
    models_from_state,
)
from airflow_mlops.targets._lock import service_lock
from airflow_mlops.targets.base import (
    DeploymentTarget,
    ServiceInfo,
    ServiceKeys,
    ServiceSpec,
    ServiceStatus,
)

__all__ = ["DEFAULT_GATEWAY_IMAGE", "DockerTarget", "gateway_image_setting"]

#: Gateway image for users (any HAProxy >= 2.2); tests and CI use ``airflow-mlops/haproxy:bookworm``.
DEFAULT_GATEWAY_IMAGE = "haproxy:2.8"

STATE_ROLE = f"{LABEL_PREFIX}/role"
STATE_SLOT = f"{LABEL_PREFIX}/slot"
STATE_PORT = f"{LABEL_PREFIX}/port"
STATE_CREATED = f"{LABEL_PREFIX}/created"
STATE_REVISION = f"{LABEL_PREFIX}/revision"
ROLE_SCORING = "scoring"
ROLE_GATEWAY = "gateway"
COLLECT_DIR = "/var/mlops/data/collected"


def gateway_image_setting(image: str | None = None) -> str:
    """Return the gateway image: the argument, else ``$MLOPS_GATEWAY_IMAGE``, else ``haproxy:2.8``."""
    return image or os.environ.get("MLOPS_GATEWAY_IMAGE") or DEFAULT_GATEWAY_IMAGE


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class DockerTarget(DeploymentTarget):
    """Run scoring images as containers on a Docker engine, behind an HAProxy gateway.

    :param client: a ``docker.APIClient`` (tests inject one); default from ``docker_conn_id``
        (the Docker provider's hook) or the environment (``docker.from_env()``).
    :param docker_conn_id: Airflow Docker connection.
    :param home: folder for keys and gateway files (default ``$MLOPS_HOME/docker``).
    :param gateway_image: HAProxy image (default ``$MLOPS_GATEWAY_IMAGE`` or ``haproxy:2.8``).
    :param host: host address the gateway publishes on.
    :param start_grace: seconds a container may take to get ready before it counts as
        ``Unhealthy`` rather than ``Transitioning``.
    :param ready_timeout: seconds an update waits for the new container to get ready.
    :param drain_timeout: seconds the old container may take to finish in-flight requests.
    :param max_restarts: restarts Docker tries (policy ``on-failure``) before giving up.
    :param settle_time: seconds a new container must keep passing the gateway's readiness
        checks before traffic moves to it.
    """

    name = "docker"

    def __init__(
        self,
        client: Any | None = None,
        *,
        docker_conn_id: str | None = None,
        home: str | Path | None = None,
        gateway_image: str | None = None,
        host: str = "127.0.0.1",
        start_grace: float = 120.0,
        ready_timeout: float = 120.0,
        drain_timeout: float = 30.0,
        max_restarts: int = 3,
        settle_time: float = 1.5,
    ) -> None:
        self._client = client
        self.docker_conn_id = docker_conn_id
        self.home = Path(home) if home else Path(mlops_home()) / "docker"
        self.gateway_image = gateway_image_setting(gateway_image)
        self.host = host
        self.start_grace = start_grace
        self.ready_timeout = ready_timeout
        self.drain_timeout = drain_timeout
        self.max_restarts = max_restarts
        self.settle_time = settle_time

    @cached_property
    def client(self) -> Any:
        """Return the Docker API client (built on first use)."""
        return self._client if self._client is not None else docker_client(self.docker_conn_id)

    # -- names, files, locks -----------------------------------------------------------------

    @staticmethod
    def network_name(name: str) -> str:
        """Return the service's network name."""
        return f"mlops-{name}"

    @staticmethod
    def gateway_name(name: str) -> str:
        """Return the service's gateway container name."""
        return f"mlops-{name}-gateway"

    def _dir(self, name: str) -> Path:
        return self.home / check_service_name(name)

    def _keys_path(self, name: str) -> Path:
        return self._dir(name) / KEYS_FILE_NAME

    def _gateway_dir(self, name: str) -> Path:
        return self._dir(name) / "gateway"

    def _socket(self, name: str) -> Path:
        return self._gateway_dir(name) / gw.SOCKET_NAME

    def _lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return service_lock(self.home, name)

    @staticmethod
    def _run_as() -> tuple[str, int, int]:
        """Return the container user and the owner its files need.

        Never root: as root, containers run as the image's unprivileged user and their
        files are given to it; otherwise they run as the caller's own uid.
        """
        if os.geteuid() == 0:
            uid, gid = (int(x) for x in IMAGE_USER.split(":"))
            return IMAGE_USER, uid, gid
        return f"{os.getuid()}:{os.getgid()}", os.getuid(), os.getgid()

    def _own(self, path: Path) -> None:
        _, uid, gid = self._run_as()
        if os.geteuid() == 0:
            os.chown(path, uid, gid)

    def _write_keys(self, name: str, keys: ServiceKeys) -> Path:
        folder = self._dir(name)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        path = self._keys_path(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(keys.to_dict(), f)
        self._own(path)
        return path

    def _write_gateway_config(self, name: str, active: str) -> None:
        folder = self._gateway_dir(name)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._own(folder)
        tmp = folder / f".{gw.CONFIG_NAME}.tmp"
        tmp.write_text(gw.render_config(active))
        self._own(tmp)
        os.replace(tmp, folder / gw.CONFIG_NAME)

    # -- containers --------------------------------------------------------------------------

    def _containers(self, name: str | None = None, role: str | None = None) -> list[dict[str, Any]]:
        labels = [f"{STATE_MANAGED_BY}={MANAGED_BY}"]
        if name:
            labels.append(f"{STATE_SERVICE}={name}")
        if role:
            labels.append(f"{STATE_ROLE}={role}")
        found = self.client.containers(all=True, filters={"label": labels})
        return sorted(found, key=lambda c: (c["Labels"].get(STATE_CREATED, ""), c.get("Created", 0)))

    def _active(self, name: str) -> dict[str, Any]:
        """Return the serving container's inspect data (the oldest, while an update runs)."""
        scoring = self._containers(name, ROLE_SCORING)
        if not scoring:
            raise DeploymentNotFound(f"no docker service named {name!r}", service=name)
        return self.client.inspect_container(scoring[0]["Id"])

    def _free_port(self, requested: int | None) -> int:
        taken = {c["Labels"].get(STATE_PORT) for c in self._containers(role=ROLE_GATEWAY)}
        if requested:
            if str(requested) in taken:
                raise DeploymentError(f"port {requested} is already used by another docker service")
            return requested
        for _ in range(20):
            with socket.socket() as sock:
                sock.bind((self.host, 0))
                port = sock.getsockname()[1]
            if str(port) not in taken:
                return port
        raise DeploymentError("could not find a free port")

    def _image_state(self, spec: ServiceSpec) -> tuple[str, str | None]:
        """Check the image holds ``spec.models``; return ``(image, manifest hash)``."""
        import docker.errors

        if not spec.image:
            raise ConfigError(f"service {spec.name!r}: the docker target runs an image; build one first")
        try:
            data = self.client.inspect_image(spec.image)
        except docker.errors.ImageNotFound:
            raise ConfigError(f"service {spec.name!r}: image {spec.image} does not exist") from None
        labels = (data.get("Config") or {}).get("Labels") or {}
        baked = json.loads(labels.get(LABEL_MODELS) or "[]")
        if baked:
            have = sorted((m["name"], str(m["version"]), m["digest"]) for m in baked)
            want = sorted((m.name, m.version, m.digest) for m in spec.models)
            if have != want:
                raise ConfigError(
                    f"service {spec.name!r}: image {spec.image} holds models {have}, not {want}; "
                    "build an image for these model versions"
                )
        manifest_hash = spec.manifest_hash or labels.get(LABEL_MANIFEST_HASH)
        return spec.image, manifest_hash

    def _start_scoring(self, spec: ServiceSpec, keys: ServiceKeys, slot: str, port: int) -> dict[str, Any]:
        image, manifest_hash = self._image_state(spec)
        cspec = container_spec(spec, keys)
        env = dict(cspec.env)
        env.pop("MLOPS_ENTRY_SCRIPT", None)  # the image carries its entry script at a fixed path
        env.pop("MLOPS_HOST", None)
        env.update(cspec.secret_env)  # no secret store without swarm; never put into labels
        user = self._run_as()[0]
        keys_path = self._write_keys(spec.name, keys)
        binds = {str(keys_path): {"bind": f"{KEYS_MOUNT_DIR}/{KEYS_FILE_NAME}", "mode": "ro"}}
        if spec.config.collect_model_data and "MLOPS_COLLECT_SINK" not in env:
            collected = Path(mlops_home()) / "collected" / spec.name
            collected.mkdir(parents=True, exist_ok=True)
            self._own(collected)
            binds[str(collected)] = {"bind": f"{COLLECT_DIR}/{spec.name}", "mode": "rw"}
            env["MLOPS_COLLECT_SINK"] = COLLECT_DIR
        revision = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + os.urandom(2).hex()
        labels = dict(cspec.state)
        labels[STATE_IMAGE] = image
        if manifest_hash:
            labels[STATE_MANIFEST_HASH] = manifest_hash
        labels.update({
            STATE_ROLE: ROLE_SCORING,
            STATE_SLOT: slot,
            STATE_PORT: str(port),
            STATE_CREATED: _now(),
            STATE_REVISION: revision,
        })  # fmt: skip
        host_config = self.client.create_host_config(
            binds=binds,
            network_mode=self.network_name(spec.name),
            restart_policy={"Name": "on-failure", "MaximumRetryCount": self.max_restarts},
            nano_cpus=int(cspec.cpu * 1e9),
            mem_limit=f"{cspec.memory_mib}m",
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            init=True,
        )
        networking = self.client.create_networking_config(
            {self.network_name(spec.name): self.client.create_endpoint_config(aliases=[slot])}
        )
        container = self.client.create_container(
            image,
            name=f"mlops-{spec.name}-{slot}-{revision[-6:]}",
            environment=env,
            labels=labels,
            user=user,
            host_config=host_config,
            networking_config=networking,
            stop_signal="SIGTERM",
        )
        self.client.start(container["Id"])
        return self.client.inspect_container(container["Id"])

    def _start_gateway(self, name: str, port: int) -> None:
        user = self._run_as()[0]
        folder = self._gateway_dir(name)
        host_config = self.client.create_host_config(
            binds={str(folder): {"bind": gw.GATEWAY_DIR, "mode": "rw"}},
            port_bindings={gw.GATEWAY_PORT: (self.host, port)},
            network_mode=self.network_name(name),
            restart_policy={"Name": "unless-stopped"},
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
        )
        labels = {
            STATE_MANAGED_BY: MANAGED_BY,
            STATE_SERVICE: name,
            STATE_ROLE: ROLE_GATEWAY,
            STATE_PORT: str(port),
            STATE_CREATED: _now(),
        }
        container = self.client.create_container(
            self.gateway_image,
            name=self.gateway_name(name),
            command=["haproxy", "-db", "-f", f"{gw.GATEWAY_DIR}/{gw.CONFIG_NAME}"],
            labels=labels,
            user=user,
            ports=[gw.GATEWAY_PORT],
            host_config=host_config,
        )
        self.client.start(container["Id"])
        deadline = time.monotonic() + 30
        while not self._socket(name).exists():
            if time.monotonic() > deadline or self.client.inspect_container(container["Id"])["State"][
                "Status"
            ] in ("exited", "dead"):
                raise DeploymentError(
                    f"gateway of {name!r} did not start:\n{self._container_logs(container['Id'], 20)}",
                    service=name,
                )
            time.sleep(0.1)

    def _container_logs(self, container_id: str, tail: int) -> str:
        import docker.errors

        try:
            raw = self.client.logs(container_id, stdout=True, stderr=True, tail=tail)
        except docker.errors.NotFound:
            return ""
        return raw.decode("utf-8", errors="replace").rstrip("\n")

    def _remove(self, container_id: str, *, timeout: float) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            with contextlib.suppress(docker.errors.APIError):
                self.client.stop(container_id, timeout=int(timeout))
            self.client.remove_container(container_id, force=True)

    def _url(self, port: int | str) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{port}"

    # -- the interface -----------------------------------------------------------------------

    def deploy(self, spec: ServiceSpec) -> ServiceInfo:
        """Create the network, start the scoring container and the gateway publishing its port."""
        import docker.errors

        check_service_name(spec.name)
        with self._lock(spec.name):
            if self._containers(spec.name):
                raise DeploymentError(
                    f"docker service {spec.name!r} already exists; update or delete it", service=spec.name
                )
            self._image_state(spec)
            port = self._free_port(spec.config.port)
            keys = spec.keys or ServiceKeys.generate()
            try:
                self.client.create_network(
                    self.network_name(spec.name),
                    driver="bridge",
                    labels={STATE_MANAGED_BY: MANAGED_BY, STATE_SERVICE: spec.name},
                )
                data = self._start_scoring(spec, keys, gw.SLOTS[0], port)
                self._write_gateway_config(spec.name, gw.SLOTS[0])
                self._start_gateway(spec.name, port)
            except (docker.errors.APIError, DeploymentError) as e:
                self._delete(spec.name)
                if isinstance(e, DeploymentError):
                    raise
                raise DeploymentError(f"docker refused service {spec.name!r}: {e}", service=spec.name) from e
        return self._info(data, ServiceStatus(ServiceState.TRANSITIONING, "starting"))

    def update(self, spec: ServiceSpec) -> ServiceInfo:
        """Start the new container in the free slot; switch the gateway once it is ready.

        :raises UpdateFailed: the new container did not become ready; the old one still serves.
        """
        import docker.errors

        with self._lock(spec.name):
            old = self._active(spec.name)
            labels = old["Config"]["Labels"]
            port = int(labels[STATE_PORT])
            if spec.config.port and spec.config.port != port:
                raise ConfigError(
                    f"service {spec.name!r} listens on port {port}; an in-place update keeps the URL, "
                    f"so port {spec.config.port} cannot be set (delete and redeploy to move it)"
                )
            old_slot = labels[STATE_SLOT]
            new_slot = gw.other_slot(old_slot)
            for leftover in self._containers(spec.name, ROLE_SCORING):
                if leftover["Id"] != old["Id"]:  # from an update that died half-way
                    self._remove(leftover["Id"], timeout=1)
            keys = spec.keys or self.keys(spec.name)
            sock = self._socket(spec.name)
            try:
                new = self._start_scoring(spec, keys, new_slot, port)
            except docker.errors.APIError as e:
                raise UpdateFailed(spec.name, f"docker refused the new container: {e}") from e
            try:
                self._wait_slot_ready(spec.name, new["Id"], new_slot)
                # Flip: the new slot takes new requests, the old one finishes what it has.
                gw.runtime_command(
                    sock,
                    f"set server {gw.BACKEND}/{new_slot} state ready; "
                    f"set server {gw.BACKEND}/{old_slot} state drain",
                )
            except BaseException as e:
                tail = self._container_logs(new["Id"], 50)
                with contextlib.suppress(DeploymentError):
                    gw.runtime_command(sock, f"set server {gw.BACKEND}/{new_slot} state maint")
                self._remove(new["Id"], timeout=5)
                if isinstance(e, UpdateFailed):
                    raise UpdateFailed(spec.name, e.reason, log_tail=tail) from None
                raise
            self._write_gateway_config(spec.name, new_slot)
            self._drain(spec.name, old_slot)
            with contextlib.suppress(DeploymentError):
                gw.runtime_command(sock, f"set server {gw.BACKEND}/{old_slot} state maint")
            self._remove(old["Id"], timeout=self.drain_timeout)
            data = self.client.inspect_container(new["Id"])
        return self._info(data, self._status(spec.name, data))

    def _wait_slot_ready(self, name: str, container_id: str, slot: str) -> None:
        """Put ``slot`` in ``drain`` (checked, no traffic) and wait until HAProxy sees it ready."""
        sock = self._socket(name)
        # Leaving maintenance restores the slot's last health, which its previous occupant
        # earned: force it down so only fresh checks of the new container bring it up.
        gw.runtime_command(
            sock, f"set server {gw.BACKEND}/{slot} state drain; set server {gw.BACKEND}/{slot} health down"
        )
        deadline = time.monotonic() + self.ready_timeout
        passing_since: float | None = None
        while True:
            data = self.client.inspect_container(container_id)
            state, restarted = data["State"], int(data.get("RestartCount") or 0)
            if state["Status"] in ("exited", "dead", "restarting") or state.get("Restarting") or restarted:
                raise UpdateFailed(name, f"the new container exited with code {state.get('ExitCode')}")
            row = gw.server_stats(sock).get(slot, {})
            # A drained server that passes its checks reports DRAIN; a failing one DOWN. It must
            # keep passing for a few check intervals (a crashing script can answer once).
            if row.get("status") == "DRAIN" and row.get("check_status", "").lstrip("* ").startswith("L7OK"):
                passing_since = passing_since or time.monotonic()
                if time.monotonic() - passing_since >= self.settle_time:
                    return
            else:
                passing_since = None
            if time.monotonic() > deadline:
                raise UpdateFailed(
                    name,
                    f"the new container was not ready after {self.ready_timeout:g} s "
                    f"(gateway check: {row.get('check_status') or row.get('status') or 'none'})",
                )
            time.sleep(0.2)

    def _drain(self, name: str, slot: str) -> None:
        """Wait (bounded) until the gateway has no request in flight on ``slot``."""
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            try:
                row = gw.server_stats(self._socket(name)).get(slot, {})
            except DeploymentError:
                return
            if int(row.get("scur") or 0) == 0:
                return
            time.sleep(0.1)

    def status(self, name: str) -> ServiceStatus:
        """Map container state, Docker health and ``/health/ready`` to a service state."""
        return self._status(name, self._active(name))

    def _status(self, name: str, data: dict[str, Any]) -> ServiceStatus:
        state = data["State"]
        restarts = int(data.get("RestartCount") or 0)
        status = state.get("Status")
        if status in ("exited", "dead") or state.get("Restarting") or status == "restarting":
            how = f"exited with code {state.get('ExitCode')}"
            if restarts:
                how += f" after {restarts} restart(s) (crash loop)"
            tail = self._container_logs(data["Id"], 20)
            return ServiceStatus(ServiceState.FAILED, f"container {how}\n{tail}")
        if status in ("created", "paused"):
            return ServiceStatus(ServiceState.TRANSITIONING, f"container is {status}")
        health = (state.get("Health") or {}).get("Status", "none")
        if health == "unhealthy":
            return ServiceStatus(ServiceState.UNHEALTHY, "Docker health check (/health/live) is failing")
        gateway = self._gateway_state(name)
        if gateway != "running":
            return ServiceStatus(ServiceState.UNHEALTHY, f"gateway container is {gateway}")
        url = self._url(data["Config"]["Labels"][STATE_PORT])
        try:
            ready = httpx.get(f"{url}/health/ready", timeout=2.0).status_code == 200
            why = "" if ready else "GET /health/ready is not 200"
        except httpx.HTTPError as e:
            ready, why = False, f"GET /health/ready failed: {type(e).__name__}"
        if ready:
            return ServiceStatus(ServiceState.HEALTHY)
        if restarts:
            return ServiceStatus(
                ServiceState.FAILED,
                f"container restarted {restarts} time(s) and is not ready (crash loop)\n"
                f"{self._container_logs(data['Id'], 20)}",
            )
        started = state.get("StartedAt", "")
        age = _age(started)
        if health == "starting" or age < self.start_grace:
            return ServiceStatus(ServiceState.TRANSITIONING, f"starting ({why})")
        return ServiceStatus(ServiceState.UNHEALTHY, f"not ready {age:.0f} s after start: {why}")

    def _gateway_state(self, name: str) -> str:
        import docker.errors

        try:
            return self.client.inspect_container(self.gateway_name(name))["State"]["Status"]
        except docker.errors.NotFound:
            return "missing"

    def logs(self, name: str, tail: int = 100) -> str:
        """Return the last ``tail`` lines of the serving container's output."""
        return self._container_logs(self._active(name)["Id"], tail)

    def keys(self, name: str) -> ServiceKeys:
        """Return the service's keys (from its 0600 secret file)."""
        try:
            data = json.loads(self._keys_path(name).read_text())
        except FileNotFoundError:
            self._active(name)  # DeploymentNotFound when there is no such service
            raise DeploymentError(f"keys file of docker service {name!r} is missing", service=name) from None
        except (OSError, ValueError) as e:
            raise DeploymentError(f"keys of docker service {name!r} are unreadable", service=name) from e
        return ServiceKeys(data["primary_key"], data["secondary_key"])

    def delete(self, name: str) -> None:
        """Remove the service's containers (draining them), its network and its secret files."""
        with self._lock(name):
            if not self._containers(name):
                raise DeploymentNotFound(f"no docker service named {name!r}", service=name)
            self._delete(name)

    def _delete(self, name: str) -> None:
        import docker.errors

        for container in self._containers(name):
            self._remove(container["Id"], timeout=10)
        with contextlib.suppress(docker.errors.NotFound):
            self.client.remove_network(self.network_name(name))
        shutil.rmtree(self._dir(name), ignore_errors=True)

    def list(self, model: str | None = None, image: str | None = None) -> list[ServiceInfo]:
        """List services by their labels, optionally only those serving ``model`` or running ``image``."""
        seen: dict[str, dict[str, Any]] = {}
        for container in self._containers(role=ROLE_SCORING):
            seen.setdefault(container["Labels"][STATE_SERVICE], container)  # oldest = serving
        found = []
        for name, container in sorted(seen.items()):
            labels = container["Labels"]
            if model and not any(m.get("name") == model for m in models_from_state(labels)):
                continue
            if image and labels.get(STATE_IMAGE) != image:
                continue
            data = self.client.inspect_container(container["Id"])
            found.append(self._info(data, self._status(name, data)))
        return found

    def get(self, name: str) -> ServiceInfo:
        """Return the service's record with its live state."""
        data = self._active(name)
        return self._info(data, self._status(name, data))

    def _info(self, data: dict[str, Any], status: ServiceStatus) -> ServiceInfo:
        labels = data["Config"]["Labels"]
        config = json.loads(labels.get(STATE_CONFIG) or "{}")
        return ServiceInfo(
            name=labels[STATE_SERVICE],
            target=self.name,
            url=self._url(labels[STATE_PORT]),
            state=status.state,
            models=models_from_state(labels),
            image=labels.get(STATE_IMAGE),
            manifest_hash=labels.get(STATE_MANIFEST_HASH),
            auth_enabled=DeploymentConfig.from_dict(config).auth_enabled,
            details={
                "container": data["Name"].lstrip("/"),
                "container_id": data["Id"][:12],
                "gateway": self.gateway_name(labels[STATE_SERVICE]),
                "network": self.network_name(labels[STATE_SERVICE]),
                "port": int(labels[STATE_PORT]),
                "container_port": DEFAULT_SCORING_PORT,
                "slot": labels.get(STATE_SLOT),
                "revision": labels.get(STATE_REVISION),
                "created": labels.get(STATE_CREATED),
                "config": config,
                "reason": status.reason,
            },
        )


def _age(started_at: str) -> float:
    """Return seconds since Docker's ``StartedAt`` (nanosecond ISO-8601) or 0 if unknown."""
    if not started_at or started_at.startswith("0001"):
        return 0.0
    stamp = started_at.rstrip("Z").split(".")[0]
    try:
        started = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - started).total_seconds()
