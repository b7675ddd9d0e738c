"""Deploy, update and delete scoring services (thin: the work is in :class:`DeploymentHook`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink, Context

from airflow_mlops.config import DeploymentConfig
from airflow_mlops.exceptions import ConfigError, DeploymentNotFound
from airflow_mlops.hooks.deployment import DeploymentHook

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

__all__ = [
    "DeleteServiceOperator",
    "DeployServiceOperator",
    "ScoringServiceLink",
    "UpdateServiceOperator",
]

MODES = ("create", "update", "create_or_update")


class ScoringServiceLink(BaseOperatorLink):
    """Extra link "Scoring service": the deployed service's URL (its ``/swagger.json``)."""

    name = "Scoring service"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""


def _public(info: Any) -> dict[str, Any]:
    """Return the XCom form of a ServiceInfo (it holds no keys; this keeps it that way)."""
    data = info.to_dict()
    data["details"] = {k: v for k, v in (data.get("details") or {}).items() if "key" not in k.lower()}
    return data


class DeployServiceOperator(BaseOperator):
    """Deploy registered models as a scoring service; return the service's URL and state.

    The service is usually still ``Transitioning`` when this returns: follow it with a
    :class:`~airflow_mlops.sensors.health.WaitHealthySensor`.

    :param service_name: service name, unique on the target (templated).
    :param models: ``"name:version"``, ``"name@alias"`` or ``"name"`` (latest) references (templated).
    :param target: ``local`` (default), ``docker``, ``aks``, ``aci`` or ``edge`` (templated).
    :param config: deployment config: a dict of its keys, or a ``deploymentconfig.json`` path (templated).
    :param entry_script: Azure ML-style scoring script, relative to ``source_dir`` (templated).
    :param source_dir: folder of the entry script (templated).
    :param image: scoring image, e.g. from ``BuildImageOperator`` (templated).
    :param manifest_hash: the image manifest's hash, checked against ``GET /version`` (templated).
    :param mode: ``create`` (fail if it exists), ``update`` (in place, same URL and keys) or
        ``create_or_update``.
    :param mlflow_conn_id: registry connection; missing means the embedded default registry.
    :param target_kwargs: keyword arguments for the target's constructor.
    """

    template_fields: Sequence[str] = (
        "service_name",
        "models",
        "target",
        "config",
        "entry_script",
        "source_dir",
        "image",
        "manifest_hash",
    )
    template_fields_renderers = {"config": "json", "models": "json"}
    template_ext: Sequence[str] = ()
    operator_extra_links = (ScoringServiceLink(),)
    ui_color = "#bbdefb"

    def __init__(
        self,
        *,
        service_name: str,
        models: list[str] | str,
        target: str = "local",
        config: DeploymentConfig | dict[str, Any] | str | None = None,
        entry_script: str | None = None,
        source_dir: str | None = None,
        image: str | None = None,
        manifest_hash: str | None = None,
        mode: str = "create",
        mlflow_conn_id: str = DeploymentHook.default_conn_name,
        target_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.service_name = service_name
        self.models = models
        self.target = target
        self.config = config
        self.entry_script = entry_script
        self.source_dir = source_dir
        self.image = image
        self.manifest_hash = manifest_hash
        self.mode = mode
        self.mlflow_conn_id = mlflow_conn_id
        self.target_kwargs = target_kwargs or {}
        self._created: str | None = None

    @property
    def hook(self) -> DeploymentHook:
        """Return a deployment hook for the target."""
        return DeploymentHook(self.target, self.mlflow_conn_id, self.target_kwargs)

    def _models(self) -> list[str]:
        models = [self.models] if isinstance(self.models, str) else list(self.models or [])
        return [str(m).strip() for m in models if str(m).strip()]

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        models = self._models()
        # No config on an update keeps the running one; on a create it means the defaults.
        config = DeploymentConfig.coerce(self.config) if self.config else None
        image = self.image or None
        manifest_hash = self.manifest_hash or None
        mode = self.mode
        if mode == "create_or_update":
            mode = "update" if hook.service_exists(self.service_name) else "create"
        if mode == "update":
            self.log.info("Updating %s on %s to %s", self.service_name, hook.target_name, models)
            info = hook.update_service(
                self.service_name,
                models or None,
                image=image,
                manifest_hash=manifest_hash,
                config=config,
                entry_script=self.entry_script or None,
                source_dir=self.source_dir or None,
            )
        else:
            if not models:
                raise ConfigError(f"service {self.service_name!r}: no models to deploy")
            self.log.info("Deploying %s on %s with %s", self.service_name, hook.target_name, models)
            self._created = self.service_name
            info = hook.deploy_service(
                self.service_name,
                models,
                config=config,
                entry_script=self.entry_script or None,
                source_dir=self.source_dir or None,
                image=image,
                manifest_hash=manifest_hash,
            )
        self._created = None
        self.log.info("Service %s: %s (%s), scoring URI %s", info.name, info.state, mode, info.scoring_uri)
        context["ti"].xcom_push(key=ScoringServiceLink().xcom_key, value=info.url)
        return _public(info)

    def on_kill(self) -> None:
        # Only a service this run was creating is removed; an interrupted update leaves the
        # previous version serving (the target only switches once the new one is ready).
        if self._created:
            self.log.info("Task killed: deleting service %s that it was creating", self._created)
            self.hook.delete_service(self._created, missing_ok=True)


class UpdateServiceOperator(DeployServiceOperator):
    """Update a deployed service in place (same URL and keys); fail if it does not exist.

    Takes :class:`DeployServiceOperator`'s parameters; models, config and entry script not
    given are kept from the running deployment.
    """

    def __init__(self, *, models: list[str] | str | None = None, **kwargs: Any) -> None:
        kwargs.pop("mode", None)
        super().__init__(models=models or [], mode="update", **kwargs)


class DeleteServiceOperator(BaseOperator):
    """Delete a scoring service and release its model versions in the registry.

    :param service_name: the service (templated).
    :param target: target it runs on (templated).
    :param missing_ok: succeed when there is no such service.
    :param mlflow_conn_id: registry connection.
    :param target_kwargs: keyword arguments for the target's constructor.
    """

    template_fields: Sequence[str] = ("service_name", "target")
    ui_color = "#ffcdd2"

    def __init__(
        self,
        *,
        service_name: str,
        target: str = "local",
        missing_ok: bool = True,
        mlflow_conn_id: str = DeploymentHook.default_conn_name,
        target_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.service_name = service_name
        self.target = target
        self.missing_ok = missing_ok
        self.mlflow_conn_id = mlflow_conn_id
        self.target_kwargs = target_kwargs or {}

    def execute(self, context: Context) -> dict[str, Any]:
        hook = DeploymentHook(self.target, self.mlflow_conn_id, self.target_kwargs)
        try:
            deleted = hook.delete_service(self.service_name, missing_ok=self.missing_ok)
        except DeploymentNotFound:
            self.log.error("No service %s on %s", self.service_name, self.target)
            raise
        self.log.info(
            "Service %s on %s: %s", self.service_name, self.target, "deleted" if deleted else "absent"
        )
        return {"service": self.service_name, "target": self.target, "deleted": deleted}
