"""Deploy registered models as scoring services on any target, and keep the registry in step.

The hook is where deploying is decided: it resolves model references against the registry,
downloads the versions, builds the :class:`~airflow_mlops.targets.base.ServiceSpec`, calls
the target, and records in the registry which deployment uses which version (so the delete
guard holds while a version serves, and lets go once it stops).

Models are downloaded to ``$MLOPS_HOME/deployments/<service>/<revision>/models/<model>/<version>/``:
the parent ``models`` folder is the service's model folder (Azure ML's ``AZUREML_MODEL_DIR``),
or, for a single model, its version folder.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
from airflow.sdk import BaseHook

from airflow_mlops.config import DeploymentConfig
from airflow_mlops.constants import ServiceState, mlops_home
from airflow_mlops.exceptions import (
    ConfigError,
    DeploymentError,
    DeploymentFailed,
    DeploymentNotFound,
    HealthTimeout,
    RegistryError,
    UpdateNotVerified,
)
from airflow_mlops.targets import get_target
from airflow_mlops.targets.base import (
    DeploymentTarget,
    ModelRef,
    ServiceInfo,
    ServiceKeys,
    ServiceSpec,
    ServiceStatus,
)

__all__ = ["DeploymentHook", "parse_model_reference"]

log = logging.getLogger(__name__)


def parse_model_reference(ref: str) -> tuple[str, str]:
    """Split ``"name:version"``, ``"name@alias"`` or ``"name"`` into ``(name, registry ref)``.

    The registry ref is what :meth:`MlflowRegistryHook.resolve_version` takes: a version
    number, ``"@alias"`` or ``"latest"``.
    """
    ref = str(ref).strip()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = f"@{alias}"
    elif ":" in ref:
        name, version = ref.rsplit(":", 1)
    else:
        name, version = ref, "latest"
    if not name or not version or version == "@":
        raise ConfigError(f"model reference {ref!r} must be 'name', 'name:version' or 'name@alias'")
    return name, version


class DeploymentHook(BaseHook):
    """Deploy, update, inspect and delete scoring services on one target.

    :param target: target name (``local``, ``docker``, ``aks``, ``aci``, ``edge``) or a target
        instance (tests inject one).
    :param mlflow_conn_id: connection of the MLflow registry; a missing connection means the
        embedded default registry.
    :param target_kwargs: keyword arguments for the target's constructor.
    :param registry: a registry hook to use instead of building one (tests inject one).
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLOps deployments"

    def __init__(
        self,
        target: str | DeploymentTarget = "local",
        mlflow_conn_id: str = default_conn_name,
        target_kwargs: dict[str, Any] | None = None,
        *,
        registry: Any | None = None,
    ) -> None:
        super().__init__()
        self._target = target
        self.mlflow_conn_id = mlflow_conn_id
        self.target_kwargs = dict(target_kwargs or {})
        self._registry = registry

    @property
    def target_name(self) -> str:
        """Return the target's name."""
        return self._target if isinstance(self._target, str) else self._target.name

    @cached_property
    def target(self) -> DeploymentTarget:
        """Return the deployment target (built on first use)."""
        if isinstance(self._target, DeploymentTarget):
            return self._target
        return get_target(self._target, **self.target_kwargs)

    @cached_property
    def registry(self) -> Any:
        """Return the registry hook (built on first use)."""
        if self._registry is not None:
            return self._registry
        from airflow_mlops.hooks.registry import MlflowRegistryHook

        return MlflowRegistryHook(mlflow_conn_id=self.mlflow_conn_id)

    def test_connection(self) -> tuple[bool, str]:
        """Check that the registry answers and the target can list its services."""
        ok, message = self.registry.test_connection()
        if not ok:
            return ok, message
        try:
            count = len(self.target.list())
        except Exception as e:  # report any failure to the connection form instead of raising
            return False, f"target {self.target_name}: {e}"
        return True, f"{message}; target {self.target_name} lists {count} service(s)"

    # -- helpers -----------------------------------------------------------------------------

    def user_of(self, service: str) -> str:
        """Return the usage tag value this hook records on model versions for ``service``."""
        return f"deployment:{self.target_name}/{service}"

    def _service_root(self, service: str) -> Path:
        return Path(mlops_home()) / "deployments" / self.target_name / service

    def _download(self, service: str, models: list[str] | tuple[str, ...]) -> tuple[Path, list[ModelRef]]:
        if not models:
            raise ConfigError(f"service {service!r}: give at least one model")
        if isinstance(models, str):
            models = [models]
        revision = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        root = self._service_root(service) / revision
        refs: list[ModelRef] = []
        try:
            for reference in models:
                name, ref = parse_model_reference(reference)
                version = str(self.registry.resolve_version(name, ref))
                dst = root / "models" / name / version
                dst.mkdir(parents=True, exist_ok=True)
                refs.append(self.registry.download_model(name, version, str(dst)))
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return root, refs

    def _mark(self, refs: list[ModelRef], service: str) -> None:
        marked: list[ModelRef] = []
        try:
            for ref in refs:
                self.registry.mark_in_use(ref.name, ref.version, self.user_of(service))
                marked.append(ref)
        except BaseException:
            self._release([(m.name, m.version) for m in marked], service)
            raise

    def _release(self, models: list[tuple[str, str]], service: str) -> None:
        for name, version in models:
            try:
                self.registry.release(name, version, self.user_of(service))
            except RegistryError as e:  # a version deleted meanwhile has nothing left to release
                log.warning("Could not release %s:%s from %s: %s", name, version, service, e)

    def _prune(self, service: str, keep: Path | None) -> None:
        root = self._service_root(service)
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
            return
        for revision in root.iterdir() if root.is_dir() else []:
            if revision != keep:
                shutil.rmtree(revision, ignore_errors=True)

    # -- deploy / update / delete ------------------------------------------------------------

    def deploy_service(
        self,
        name: str,
        models: list[str],
        *,
        config: DeploymentConfig | dict[str, Any] | str | None = None,
        entry_script: str | None = None,
        source_dir: str | None = None,
        image: str | None = None,
        manifest_hash: str | None = None,
        keys: ServiceKeys | None = None,
        environment: dict[str, str] | None = None,
    ) -> ServiceInfo:
        """Deploy ``models`` as a new service called ``name``; return it (usually ``Transitioning``).

        :param name: service name, unique on the target.
        :param models: model references: ``"name:version"``, ``"name@alias"`` or ``"name"`` (latest).
        :param config: deployment config, a dict of its keys, or a ``deploymentconfig.json`` path.
        :param entry_script: scoring script (``init()``/``run()``), relative to ``source_dir``.
        :param source_dir: folder of the entry script and what it imports.
        :param image: scoring image (container targets).
        :param manifest_hash: the image manifest's hash, reported by ``GET /version``.
        :param keys: keys to use instead of fresh ones.
        :param environment: extra environment variables for the service.
        """
        # Checked before marking: marking then releasing for a duplicate would drop the
        # running deployment's own marks.
        if self.service_exists(name):
            raise DeploymentError(
                f"service {name!r} already exists on {self.target_name}; update or delete it", service=name
            )
        root, refs = self._download(name, models)
        spec = ServiceSpec(
            name=name,
            models=tuple(refs),
            config=DeploymentConfig.coerce(config),
            entry_script=entry_script,
            source_dir=source_dir,
            image=image,
            manifest_hash=manifest_hash,
            keys=keys,
            environment=dict(environment or {}),
        )
        try:
            self._mark(refs, name)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        try:
            info = self.target.deploy(spec)
        except BaseException:
            self._release([(r.name, r.version) for r in refs], name)
            shutil.rmtree(root, ignore_errors=True)
            raise
        log.info("Deployed %s on %s at %s serving %s", name, self.target_name, info.url, _names(refs))
        return info

    def update_service(
        self,
        name: str,
        models: list[str] | None = None,
        *,
        image: str | None = None,
        manifest_hash: str | None = None,
        config: DeploymentConfig | dict[str, Any] | str | None = None,
        entry_script: str | None = None,
        source_dir: str | None = None,
        environment: dict[str, str] | None = None,
        verify: bool = True,
    ) -> ServiceInfo:
        """Replace what ``name`` runs, in place: same URL, same keys.

        Anything not given is kept from the running deployment. After the switch the
        service's ``GET /version`` must report the new models (and ``manifest_hash``).

        :raises UpdateFailed: the new version did not come up (the old one still serves).
        :raises UpdateNotVerified: after the switch, the service reports something else than
            was deployed (a stale process or a silent rollback).
        """
        current = self.target.get(name)
        details = current.details or {}
        if models is None:
            models = [f"{m['name']}:{m['version']}" for m in current.models]
        if config is None and details.get("config"):
            config = details["config"]
        if entry_script is None and details.get("entry_script"):
            entry_script = details["entry_script"]
            source_dir = source_dir or details.get("source_dir")
        root, refs = self._download(name, models)
        spec = ServiceSpec(
            name=name,
            models=tuple(refs),
            config=DeploymentConfig.coerce(config),
            entry_script=entry_script,
            source_dir=source_dir,
            image=image if image is not None else current.image,
            manifest_hash=manifest_hash,
            environment=dict(environment or {}),
        )
        old = {(m["name"], str(m["version"])) for m in current.models}
        new = {(r.name, r.version) for r in refs}
        try:
            self._mark([r for r in refs if (r.name, r.version) not in old], name)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        try:
            info = self.target.update(spec)
        except BaseException:
            self._release(sorted(new - old), name)
            shutil.rmtree(root, ignore_errors=True)
            raise
        # The old process is gone: its versions and model copies can go too.
        self._release(sorted(old - new), name)
        self._prune(name, keep=root)
        if verify:
            self._verify_version(info, refs, manifest_hash)
        log.info("Updated %s on %s at %s to %s", name, self.target_name, info.url, _names(refs))
        return info

    def _verify_version(self, info: ServiceInfo, refs: list[ModelRef], manifest_hash: str | None) -> None:
        headers = {}
        if info.auth_enabled:
            headers["Authorization"] = f"Bearer {self.target.keys(info.name).primary_key}"
        try:
            response = httpx.get(f"{info.url.rstrip('/')}/version", headers=headers, timeout=10.0)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as e:
            raise UpdateNotVerified(info.name, f"GET /version failed after the switch: {e}") from e
        got = sorted((str(m.get("name")), str(m.get("version")), str(m.get("digest"))) for m in doc["models"])
        want = sorted((r.name, r.version, r.digest) for r in refs)
        if got != want:
            raise UpdateNotVerified(info.name, f"GET /version reports models {got}, expected {want}")
        if manifest_hash and doc.get("manifest_hash") != manifest_hash:
            raise UpdateNotVerified(
                info.name,
                f"GET /version reports manifest {doc.get('manifest_hash')}, expected {manifest_hash}",
            )

    def delete_service(self, name: str, *, missing_ok: bool = False) -> bool:
        """Stop and remove ``name``, release its model versions; return whether it existed.

        :raises DeploymentNotFound: there is no such service and ``missing_ok`` is false.
        """
        try:
            current = self.target.get(name)
        except DeploymentNotFound:
            if missing_ok:
                return False
            raise
        self.target.delete(name)
        self._release([(m["name"], str(m["version"])) for m in current.models], name)
        self._prune(name, keep=None)
        log.info("Deleted %s on %s", name, self.target_name)
        return True

    # -- inspection --------------------------------------------------------------------------

    def get_service(self, name: str) -> ServiceInfo:
        """Return the service's record with its live state."""
        return self.target.get(name)

    def service_exists(self, name: str) -> bool:
        """Tell whether the target has a service called ``name``."""
        try:
            self.target.get(name)
        except DeploymentNotFound:
            return False
        return True

    def get_service_state(self, name: str) -> ServiceStatus:
        """Return the service's state and, when not healthy, why."""
        return self.target.status(name)

    def get_logs(self, name: str, tail: int = 100) -> str:
        """Return the last ``tail`` lines of the service's output."""
        return self.target.logs(name, tail)

    def get_keys(self, name: str) -> ServiceKeys:
        """Return the service's keys (a secret: never log them)."""
        return self.target.keys(name)

    def list_services(self, model: str | None = None, image: str | None = None) -> list[ServiceInfo]:
        """List services, optionally only those serving ``model`` or running ``image``."""
        return self.target.list(model=model, image=image)

    def wait_until_healthy(
        self, name: str, timeout: float = 600.0, poll_interval: float = 2.0
    ) -> ServiceStatus:
        """Block until ``name`` is ``Healthy`` (for callers that do not defer).

        :raises DeploymentFailed: the service reached ``Failed`` (with its log tail).
        :raises HealthTimeout: it was not healthy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.get_service_state(name)
            if status.state is ServiceState.HEALTHY:
                return status
            if status.state is ServiceState.FAILED:
                raise DeploymentFailed(
                    name, state=status.state.value, reason=status.reason, log_tail=self.get_logs(name, 50)
                )
            if time.monotonic() >= deadline:
                raise HealthTimeout(name, state=status.state.value, timeout=timeout, reason=status.reason)
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))


def _names(refs: list[ModelRef]) -> str:
    return ", ".join(f"{r.name}:{r.version}" for r in refs)
