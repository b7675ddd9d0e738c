"""Local target: the scoring service as a detached process on this machine (the embedded default).

Each deployment is one ``python -m mlops_scoring`` process in its own session, so it outlives
the Airflow task that started it; a later task, or another process, finds it again through
files under ``$MLOPS_HOME/local``::

    local/<name>.json                 the state: url, port, pid, models, config, paths, times
    local/<name>/keys-<rev>.json      the keys (mode 0600; never in argv, env or logs)
    local/<name>/manifest-<rev>.json  what ``GET /version`` reports
    local/<name>/logs/<rev>.log       the process's stdout and stderr
    local/.locks/<name>.lock          serialises deploy/update/delete of one service

The state file is replaced atomically (temp file + ``os.replace``) under an ``fcntl`` lock,
so concurrent tasks never see or write a half-written record.

Updates are in place and without downtime: every process binds its port with
``SO_REUSEPORT``; the new one starts on the same port beside the old one, and only when it
says it is ready (and answers ``/version`` with the new models) is the old one sent
``SIGTERM``, which drains it. A new process that does not come up is killed; the old one
never stopped serving.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from airflow_mlops.config import DeploymentConfig
from airflow_mlops.constants import ServiceState, mlops_home
from airflow_mlops.exceptions import ConfigError, DeploymentError, DeploymentNotFound, UpdateFailed
from airflow_mlops.targets._container import check_service_name
from airflow_mlops.targets._lock import service_lock
from airflow_mlops.targets.base import (
    DeploymentTarget,
    ModelRef,
    ServiceInfo,
    ServiceKeys,
    ServiceSpec,
    ServiceStatus,
)

__all__ = ["LocalTarget", "manifest_hash_of"]

#: The line the scoring service prints once it is ready to serve.
_READY_LINE = re.compile(rb"Listening on http://")
# Processes this interpreter started; kept so they are reaped (no zombies) and their exit
# codes are known. Another process sees only the pid and reads /proc instead.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
# Inherited variables the scoring CLI would read as settings; only the spec sets those.
_SETTING_ENV = re.compile(r"^(MLOPS_|AZUREML_MODEL_DIR$)")


def manifest_hash_of(models: tuple[ModelRef, ...] | list[ModelRef], entry_script: str | None = None) -> str:
    """Return a content hash for a deployment without an image: models, digests and script."""
    doc = {
        "models": sorted([m.name, m.version, m.digest] for m in models),
        "entry_script": entry_script,
    }
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _revision() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(3).hex()


def tail_file(path: str | Path, lines: int) -> str:
    """Return the last ``lines`` lines of a text file ("" if it does not exist)."""
    if lines <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            block, data = 8192, b""
            while end > 0 and data.count(b"\n") <= lines:
                start = max(0, end - block)
                f.seek(start)
                data = f.read(end - start) + data
                end = start
    except FileNotFoundError:
        return ""
    return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", errors="replace")


class LocalTarget(DeploymentTarget):
    """Run scoring services as local processes (the embedded default; no Docker needed).

    :param home: folder for state, keys, manifests and logs (default ``$MLOPS_HOME/local``).
    :param host: interface the services bind to; the URL uses ``127.0.0.1`` for a wildcard.
    :param start_grace: seconds a started process may take to get ready before it counts as
        ``Unhealthy`` rather than ``Transitioning``.
    :param ready_timeout: seconds an update waits for the new process to get ready.
    :param stop_timeout: seconds a stopped process may drain before it is killed.
    :param python: interpreter that runs the service (default: this one).
    """

    name = "local"

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        start_grace: float = 120.0,
        ready_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        python: str | None = None,
    ) -> None:
        self.home = Path(home) if home else Path(mlops_home()) / "local"
        self.host = host
        self.start_grace = start_grace
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.python = python or sys.executable

    # -- files -------------------------------------------------------------------------------

    def _state_path(self, name: str) -> Path:
        return self.home / f"{check_service_name(name)}.json"

    def _service_dir(self, name: str) -> Path:
        return self.home / check_service_name(name)

    def _lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return service_lock(self.home, name)

    def _read_state(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self._state_path(name).read_text())
        except FileNotFoundError:
            raise DeploymentNotFound(f"no local service named {name!r}", service=name) from None
        except ValueError as e:
            raise DeploymentError(f"state file of service {name!r} is unreadable: {e}", service=name) from e

    def _write_state(self, state: dict[str, Any]) -> None:
        path = self._state_path(state["name"])
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @staticmethod
    def _write_secret(path: Path, data: dict[str, str]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)

    # -- processes ---------------------------------------------------------------------------

    @staticmethod
    def _proc_start_ticks(pid: int) -> int | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return int(stat[stat.rindex(")") + 2 :].split()[19])

    @staticmethod
    def _process_state(pid: int, start_ticks: int | None) -> tuple[bool, int | None]:
        """Return ``(alive, exit code if known)`` for a service process."""
        child = _CHILDREN.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return True, None
            _CHILDREN.pop(pid, None)
            return False, code
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False, None
        except OSError:  # no /proc: fall back to a signal-0 probe
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False, None
            except PermissionError:
                return True, None
            return True, None
        fields = stat[stat.rindex(")") + 2 :].split()
        if start_ticks is not None and int(fields[19]) != start_ticks:
            return False, None  # the pid now belongs to another process
        if fields[0] in ("Z", "X"):
            code = os.waitstatus_to_exitcode(int(fields[49])) if len(fields) > 49 else None
            return False, code
        return True, None

    def _alive(self, state: dict[str, Any]) -> bool:
        return self._process_state(int(state["pid"]), state.get("pid_start"))[0]

    def _stop(self, pid: int, start_ticks: int | None, timeout: float) -> None:
        """Send the process group SIGTERM (drain), then SIGKILL after ``timeout`` seconds."""
        if not self._process_state(pid, start_ticks)[0]:
            _CHILDREN.pop(pid, None)
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)  # the service leads its own session: pgid == pid
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                child = _CHILDREN.get(pid)
                if child is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                if not self._process_state(pid, start_ticks)[0]:
                    _CHILDREN.pop(pid, None)
                    return
                if child is None:
                    time.sleep(0.1)
        _CHILDREN.pop(pid, None)

    def _port_free(self, port: int) -> bool:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, port))
            except OSError:
                return False
        return True

    def _choose_port(self, requested: int | None) -> int:
        taken = {s.get("port") for s in self._states()}
        if requested:
            if requested in taken or not self._port_free(requested):
                raise DeploymentError(f"port {requested} is already in use")
            return requested
        for _ in range(20):
            with socket.socket() as sock:
                sock.bind((self.host, 0))
                port = sock.getsockname()[1]
            if port not in taken:
                return port
        raise DeploymentError("could not find a free port")

    def _url(self, port: int) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{port}"

    def _model_dir(self, spec: ServiceSpec, service_dir: Path, revision: str) -> Path:
        """Return the folder passed as ``--model-dir`` (``AZUREML_MODEL_DIR``)."""
        if not spec.models:
            raise ConfigError(f"service {spec.name!r}: no models to serve")
        if len(spec.models) == 1:
            return Path(spec.models[0].path).resolve()
        paths = [Path(m.path).resolve() for m in spec.models]
        parents = {p.parent.parent for p in paths}
        if len(parents) == 1 and all(
            p.name == m.version and p.parent.name == m.name for p, m in zip(paths, spec.models, strict=True)
        ):
            return parents.pop()  # already laid out <model>/<version>/ under one folder
        farm = service_dir / f"models-{revision}"
        for path, model in zip(paths, spec.models, strict=True):
            link = farm / model.name / model.version
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path, target_is_directory=True)
        return farm

    def _start(self, spec: ServiceSpec, port: int, revision: str, keys: ServiceKeys) -> dict[str, Any]:
        """Write the revision's keys and manifest and start its process; return its state."""
        service_dir = self._service_dir(spec.name)
        (service_dir / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(service_dir, 0o700)
        keys_path = service_dir / f"keys-{revision}.json"
        self._write_secret(keys_path, keys.to_dict())
        manifest_hash = spec.manifest_hash or manifest_hash_of(spec.models, spec.entry_script)
        models = [{"name": m.name, "version": m.version, "digest": m.digest} for m in spec.models]
        manifest_path = service_dir / f"manifest-{revision}.json"
        manifest_path.write_text(json.dumps({"hash": manifest_hash, "models": models, "revision": revision}))
        model_dir = self._model_dir(spec, service_dir, revision)
        config = spec.config
        argv = [
            self.python, "-m", "mlops_scoring",
            "--model-dir", str(model_dir),
            "--host", self.host,
            "--port", str(port),
            "--reuse-port",
            "--service-name", spec.name,
            "--manifest", str(manifest_path),
            "--workers", str(config.workers),
            "--max-concurrent-requests", str(config.max_concurrent_requests),
            "--max-queue", str(config.max_queue_length),
            "--max-wait-ms", str(config.max_request_wait_ms),
            "--max-batch-size", str(config.max_batch_size),
            "--max-batch-delay-us", str(config.max_batch_delay_us),
        ]  # fmt: skip
        argv += ["--keys-file", str(keys_path)] if config.auth_enabled else ["--no-auth"]
        env = {k: v for k, v in os.environ.items() if not _SETTING_ENV.match(k)}
        env["PYTHONUNBUFFERED"] = "1"
        cwd = str(service_dir)
        entry_script = None
        if spec.entry_script:
            base = Path(spec.source_dir) if spec.source_dir else Path.cwd()
            entry_script = str((base / spec.entry_script).resolve())
            argv += ["--entry-script", entry_script]
            if spec.source_dir:
                cwd = str(Path(spec.source_dir).resolve())
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd, env.get("PYTHONPATH")]))
        if config.collect_model_data and "MLOPS_COLLECT_SINK" not in spec.environment:
            argv += ["--collect-sink", str(Path(mlops_home()) / "collected")]
        if config.collect_model_data:
            argv += ["--collect-sampling", str(config.sampling_rate)]
        env.update({k: str(v) for k, v in spec.environment.items()})
        log_path = service_dir / "logs" / f"{revision}.log"
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
            except OSError as e:
                raise DeploymentError(f"cannot start the scoring service: {e}", service=spec.name) from e
        _CHILDREN[proc.pid] = proc
        return {
            "pid": proc.pid,
            "pid_start": self._proc_start_ticks(proc.pid),
            "started_at": time.time(),
            "revision": revision,
            "keys_file": str(keys_path),
            "manifest_file": str(manifest_path),
            "manifest_hash": manifest_hash,
            "log_path": str(log_path),
            "model_dir": str(model_dir),
            "models": models,
            "entry_script": entry_script,
            "source_dir": str(Path(spec.source_dir).resolve()) if spec.source_dir else None,
            "image": spec.image,
            "config": config.to_dict(),
        }

    def _remove_revision(self, run: dict[str, Any], *, keep_log: bool = False) -> None:
        for key in ("keys_file", "manifest_file") + (() if keep_log else ("log_path",)):
            if run.get(key):
                Path(run[key]).unlink(missing_ok=True)
        farm = self._service_dir_of(run) / f"models-{run['revision']}"
        shutil.rmtree(farm, ignore_errors=True)

    @staticmethod
    def _service_dir_of(run: dict[str, Any]) -> Path:
        return Path(run["manifest_file"]).parent

    # -- readiness ---------------------------------------------------------------------------

    @staticmethod
    def _probe_ready(url: str) -> tuple[bool, str]:
        try:
            response = httpx.get(f"{url}/health/ready", timeout=2.0)
        except httpx.HTTPError as e:
            return False, f"GET /health/ready failed: {type(e).__name__}"
        if response.status_code == 200:
            return True, ""
        return False, f"GET /health/ready answered {response.status_code}"

    @staticmethod
    def _log_says_ready(log_path: str) -> bool:
        try:
            with open(log_path, "rb") as f:
                return bool(_READY_LINE.search(f.read()))
        except FileNotFoundError:
            return False

    def _answers_version(self, url: str, run: dict[str, Any], keys: ServiceKeys, attempts: int = 40) -> bool:
        """Tell whether the new revision answers ``/version`` (each try is a new connection, so
        the kernel's ``SO_REUSEPORT`` hashing reaches both processes)."""
        expected_models = sorted((m["name"], m["version"], m["digest"]) for m in run["models"])
        headers = {"Authorization": f"Bearer {keys.primary_key}"}
        for _ in range(attempts):
            try:
                doc = httpx.get(f"{url}/version", headers=headers, timeout=5.0).json()
            except (httpx.HTTPError, ValueError):
                time.sleep(0.05)
                continue
            models = sorted(
                (str(m.get("name")), str(m.get("version")), str(m.get("digest")))
                for m in doc.get("models", [])
            )
            if models == expected_models and doc.get("manifest_hash") == run["manifest_hash"]:
                return True
        return False

    def _wait_new_revision(self, name: str, url: str, run: dict[str, Any], keys: ServiceKeys) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            alive, code = self._process_state(run["pid"], run["pid_start"])
            if not alive:
                raise UpdateFailed(
                    name, f"the new process exited with code {code}", log_tail=tail_file(run["log_path"], 50)
                )
            if self._log_says_ready(run["log_path"]):
                if self._answers_version(url, run, keys):
                    return
                raise UpdateFailed(
                    name,
                    "the new process never answered GET /version with the new models",
                    log_tail=tail_file(run["log_path"], 50),
                )
            time.sleep(0.1)
        raise UpdateFailed(
            name, f"the new process was not ready after {self.ready_timeout:g} s",
            log_tail=tail_file(run["log_path"], 50),
        )  # fmt: skip

    # -- the interface -----------------------------------------------------------------------

    def deploy(self, spec: ServiceSpec) -> ServiceInfo:
        """Start a new service process; fail if a service of that name exists."""
        with self._lock(spec.name):
            if self._state_path(spec.name).exists():
                raise DeploymentError(
                    f"local service {spec.name!r} already exists; update or delete it", service=spec.name
                )
            port = self._choose_port(spec.config.port)
            keys = spec.keys or ServiceKeys.generate()
            run = self._start(spec, port, _revision(), keys)
            now = _now()
            state = {"name": spec.name, "url": self._url(port), "port": port, "created": now, "updated": now}
            state.update(run)
            self._write_state(state)
        return self._info(state, ServiceStatus(ServiceState.TRANSITIONING, "starting"))

    def update(self, spec: ServiceSpec) -> ServiceInfo:
        """Start the new revision beside the old one on the same port, then drain the old one.

        :raises UpdateFailed: the new process did not get ready; the old one still serves.
        """
        with self._lock(spec.name):
            old = self._read_state(spec.name)
            port = int(old["port"])
            if spec.config.port and spec.config.port != port:
                raise ConfigError(
                    f"service {spec.name!r} listens on port {port}; an in-place update keeps the URL, "
                    f"so port {spec.config.port} cannot be set (delete and redeploy to move it)"
                )
            keys = spec.keys or self._read_keys(old)
            run = self._start(spec, port, _revision(), keys)
            try:
                self._wait_new_revision(spec.name, old["url"], run, keys)
            except BaseException:
                self._stop(run["pid"], run["pid_start"], timeout=5.0)
                self._remove_revision(run, keep_log=True)
                raise
            state = {k: v for k, v in old.items() if k not in run}
            state.update(run, updated=_now(), previous_revision=old["revision"])
            self._write_state(state)
            self._stop(int(old["pid"]), old.get("pid_start"), self.stop_timeout)
            self._remove_revision(old, keep_log=True)
            for log in (self._service_dir(spec.name) / "logs").glob("*.log"):
                if log.stem not in (run["revision"], old["revision"]):
                    log.unlink(missing_ok=True)  # keep the current and the previous log only
        return self._info(state, self.status(spec.name))

    def status(self, name: str) -> ServiceStatus:
        """Return Healthy / Transitioning / Unhealthy / Failed from the process and ``/health/ready``."""
        return self._status(self._read_state(name))

    def _status(self, state: dict[str, Any]) -> ServiceStatus:
        alive, code = self._process_state(int(state["pid"]), state.get("pid_start"))
        if not alive:
            reason = f"process {state['pid']} exited"
            reason += f" with code {code}" if code is not None else " (exit code unknown)"
            return ServiceStatus(ServiceState.FAILED, reason)
        ready, why = self._probe_ready(state["url"])
        if ready:
            return ServiceStatus(ServiceState.HEALTHY)
        age = time.time() - float(state["started_at"])
        if age < self.start_grace:
            return ServiceStatus(ServiceState.TRANSITIONING, f"starting ({why})")
        return ServiceStatus(ServiceState.UNHEALTHY, f"not ready {age:.0f} s after start: {why}")

    def logs(self, name: str, tail: int = 100) -> str:
        """Return the last ``tail`` lines the current process wrote."""
        return tail_file(self._read_state(name)["log_path"], tail)

    def _read_keys(self, state: dict[str, Any]) -> ServiceKeys:
        try:
            data = json.loads(Path(state["keys_file"]).read_text())
        except (OSError, ValueError) as e:
            raise DeploymentError(
                f"keys of service {state['name']!r} are unreadable", service=state["name"]
            ) from e
        return ServiceKeys(data["primary_key"], data["secondary_key"])

    def keys(self, name: str) -> ServiceKeys:
        """Return the service's keys (from its 0600 keys file)."""
        return self._read_keys(self._read_state(name))

    def delete(self, name: str) -> None:
        """Stop the process group (drain, then kill) and remove the state, keys, manifests and logs."""
        with self._lock(name):
            state = self._read_state(name)
            self._stop(int(state["pid"]), state.get("pid_start"), self.stop_timeout)
            self._state_path(name).unlink(missing_ok=True)
            shutil.rmtree(self._service_dir(name), ignore_errors=True)

    def _states(self) -> list[dict[str, Any]]:
        states: list[dict[str, Any]] = []
        if not self.home.is_dir():
            return states
        for path in sorted(self.home.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                states.append(json.loads(path.read_text()))
        return states

    def list(self, model: str | None = None, image: str | None = None) -> list[ServiceInfo]:
        """List services, optionally only those serving ``model`` or running ``image``."""
        found = []
        for state in self._states():
            if model and not any(m.get("name") == model for m in state.get("models", [])):
                continue
            if image and state.get("image") != image:
                continue
            found.append(self._info(state, self._status(state)))
        return found

    def get(self, name: str) -> ServiceInfo:
        """Return the service's record with its live state."""
        state = self._read_state(name)
        return self._info(state, self._status(state))

    def _info(self, state: dict[str, Any], status: ServiceStatus) -> ServiceInfo:
        config = DeploymentConfig.from_dict(state.get("config"))
        details = {
            k: state.get(k)
            for k in (
                "pid", "port", "revision", "log_path", "model_dir", "created", "updated",
                "config", "entry_script", "source_dir",
            )
        }  # fmt: skip
        details["reason"] = status.reason
        return ServiceInfo(
            name=state["name"],
            target=self.name,
            url=state["url"],
            state=status.state,
            models=list(state.get("models", [])),
            image=state.get("image"),
            manifest_hash=state.get("manifest_hash"),
            auth_enabled=config.auth_enabled,
            details=details,
        )
