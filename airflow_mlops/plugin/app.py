"""The MLOps view's FastAPI app: JSON routes for models, deployments and health, and one page.

Mounted by Airflow's API server under ``/mlops``. Plugin apps are open by default, so every
route depends on Airflow's own ``requires_authenticated`` (the same JWT bearer header or
``_token`` cookie the core API accepts): anonymous requests get 401, bad tokens 403.

Routes (relative to the mount point):

* ``GET /`` : the page (HTML; it calls the JSON routes with the browser's Airflow session);
* ``GET /api/models`` : registered models, each with its versions (newest first);
* ``GET /api/models/{name}/versions`` : one model's versions;
* ``GET /api/deployments?target=local&target=docker&model=&image=`` : services per target; a
  target whose client is unavailable (no Docker engine, say) is reported under ``unavailable``;
* ``GET /api/deployments/{target}/{name}/health`` : one service's state and reason.

Registry and target calls block, so the routes are plain ``def``: FastAPI runs them in its
thread pool, off the API server's event loop.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.api_fastapi.core_api.security import requires_authenticated
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from airflow_mlops.exceptions import ConfigError, DeploymentNotFound, MlopsError, ModelNotFound
from airflow_mlops.plugin.page import PAGE_HTML

__all__ = ["DEFAULT_TARGETS", "create_app"]

log = logging.getLogger(__name__)

#: Targets listed when the request names none (those that run next to Airflow).
DEFAULT_TARGETS = ("local", "docker")


def _setting(key: str, default: str) -> str:
    from airflow.configuration import conf

    return conf.get("mlops", key, fallback=default)


def _registry() -> Any:
    from airflow_mlops.hooks.registry import MlflowRegistryHook

    return MlflowRegistryHook(mlflow_conn_id=_setting("mlflow_conn_id", "mlflow_default"))


def _deployments(target: str) -> Any:
    from airflow_mlops.hooks.deployment import DeploymentHook

    return DeploymentHook(target=target, mlflow_conn_id=_setting("mlflow_conn_id", "mlflow_default"))


def _group_versions(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    models: dict[str, list[dict[str, Any]]] = {}
    for version in versions:
        models.setdefault(str(version.get("name")), []).append(version)
    return [
        {"name": name, "versions": sorted(vs, key=lambda v: int(v.get("version") or 0), reverse=True)}
        for name, vs in sorted(models.items())
    ]


api = APIRouter(prefix="/api", dependencies=[Depends(requires_authenticated())])


@api.get("/models")
def list_models(name: str | None = None) -> dict[str, Any]:
    """List registered models and their versions (optionally one model by name)."""
    try:
        versions = _registry().search_model_versions(name=name)
    except MlopsError as e:
        raise HTTPException(status_code=502, detail=f"registry: {e}") from e
    return {"models": _group_versions(versions)}


@api.get("/models/{name}/versions")
def list_versions(name: str) -> dict[str, Any]:
    """List one model's versions, newest first."""
    try:
        versions = _registry().search_model_versions(name=name)
    except ModelNotFound as e:
        raise HTTPException(status_code=404, detail=str(e)) from e
    except MlopsError as e:
        raise HTTPException(status_code=502, detail=f"registry: {e}") from e
    if not versions:
        raise HTTPException(status_code=404, detail=f"model {name!r} not found")
    return _group_versions(versions)[0]


@api.get("/deployments")
def list_deployments(
    target: list[str] = Query(default=list(DEFAULT_TARGETS)),  # noqa: B008 - FastAPI's idiom
    model: str | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    """List services on each target; report targets that cannot be reached instead of failing."""
    deployments: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    for name in target:
        try:
            services = _deployments(name).list_services(model=model, image=image)
        except Exception as e:  # one unreachable target (no engine, no credentials) must not hide the others
            log.info("MLOps view: target %s unavailable: %s", name, e)
            unavailable[name] = f"{type(e).__name__}: {e}"
            continue
        deployments += [service.to_dict() for service in services]
    return {"deployments": deployments, "unavailable": unavailable}


@api.get("/deployments/{target}/{name}/health")
def service_health(target: str, name: str) -> dict[str, Any]:
    """Return one service's state (``Healthy``, ``Transitioning``, ...) and, if not healthy, why."""
    try:
        status = _deployments(target).get_service_state(name)
    except DeploymentNotFound as e:
        raise HTTPException(status_code=404, detail=str(e)) from e
    except ConfigError as e:
        raise HTTPException(status_code=400, detail=str(e)) from e
    except MlopsError as e:
        raise HTTPException(status_code=502, detail=str(e)) from e
    return {"target": target, "name": name, "state": str(status.state), "reason": status.reason}


def create_app() -> FastAPI:
    """Build the app the plugin mounts under ``/mlops``."""
    app = FastAPI(title="Airflow MLOps", description="Models, deployments and service health.", version="1")
    app.include_router(api)

    @app.get("/", response_class=HTMLResponse, dependencies=[Depends(requires_authenticated())])
    def page() -> str:
        """Serve the MLOps page."""
        return PAGE_HTML

    return app
