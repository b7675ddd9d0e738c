"""The MLOps UI plugin, served by Airflow's real API server app with SimpleAuthManager.

Nothing is mocked: the plugin is discovered through its ``airflow.plugins`` entry point,
mounted by ``airflow.api_fastapi.app.create_app``, authenticated by SimpleAuthManager's own
``POST /auth/token``, and reads the embedded MLflow registry under the session's MLOPS_HOME.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

USER, PASSWORD = "mlops-admin", secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def auth_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Configure SimpleAuthManager with one known admin user (Airflow reads env at each lookup)."""
    passwords = tmp_path_factory.mktemp("auth") / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    env = {
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def client(auth_env: None, airflow_home: Path) -> Iterator[Any]:
    """A test client on the real API server app (core apps: plugins, auth manager, UI)."""
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    purge_cached_app()
    with TestClient(create_app(apps="core")) as test_client:
        yield test_client
    purge_cached_app()


@pytest.fixture(scope="module")
def token(client: Any) -> str:
    """A JWT from SimpleAuthManager's login route, as a browser or API client would get it."""
    response = client.post("/auth/token", json={"username": USER, "password": PASSWORD})
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


@pytest.fixture(scope="module")
def registered_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model version registered in the embedded registry (SQLite under the session MLOPS_HOME)."""
    from airflow_mlops.hooks.registry import MlflowRegistryHook

    source = tmp_path_factory.mktemp("plugin-model")
    (source / "model.txt").write_text("a tiny model file")
    return MlflowRegistryHook().register_model("plugin-view-model", str(source), tags={"team": "ui"})


def test_plugin_is_discovered_through_its_entry_point() -> None:
    """The distribution registers the plugin; Airflow's plugins manager loads it from there."""
    from airflow import plugins_manager

    from airflow_mlops.plugin import MlopsPlugin

    names = {ep.name: ep.value for ep in entry_points(group="airflow.plugins")}
    assert names.get("airflow_mlops") == "airflow_mlops.plugin:MlopsPlugin"
    plugins_manager.ensure_plugins_loaded()
    info = {p["name"]: p for p in plugins_manager.get_plugin_info()}
    assert "airflow_mlops" in info
    assert str(info["airflow_mlops"]["source"]).startswith("airflow-mlops==")  # loaded via the entry point
    assert [a["url_prefix"] for a in info["airflow_mlops"]["fastapi_apps"]] == ["/mlops"]
    (view,) = MlopsPlugin.external_views
    assert view["destination"] == "nav" and view["href"] == "/mlops/"


@pytest.mark.parametrize(
    "path",
    ["/mlops/", "/mlops/api/models", "/mlops/api/deployments", "/mlops/api/deployments/local/x/health"],
)
def test_anonymous_requests_are_refused(client: Any, path: str) -> None:
    """Without a token or session cookie every plugin route answers 401."""
    assert client.get(path).status_code == 401


def test_a_forged_token_is_refused(client: Any) -> None:
    response = client.get("/mlops/api/models", headers={"Authorization": "Bearer not-a-real-jwt"})
    assert response.status_code in (401, 403)


def test_models_lists_a_registered_model(client: Any, token: str, registered_model: dict[str, Any]) -> None:
    """An authenticated user sees the embedded registry's model and its version."""
    response = client.get("/mlops/api/models", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    models = {m["name"]: m for m in response.json()["models"]}
    assert "plugin-view-model" in models
    versions = [str(v["version"]) for v in models["plugin-view-model"]["versions"]]
    assert str(registered_model["version"]) in versions
    one = client.get(
        "/mlops/api/models/plugin-view-model/versions", headers={"Authorization": f"Bearer {token}"}
    )
    assert one.status_code == 200 and one.json()["name"] == "plugin-view-model"
    missing = client.get(
        "/mlops/api/models/no-such-model/versions", headers={"Authorization": f"Bearer {token}"}
    )
    assert missing.status_code == 404


def test_session_cookie_opens_the_page(client: Any, token: str) -> None:
    """The page works with the UI's session cookie (how the nav iframe calls it)."""
    client.cookies.set("_token", token)
    try:
        response = client.get("/mlops/")
    finally:
        client.cookies.clear()
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"] and "api/deployments" in response.text


def test_deployments_report_unavailable_targets(client: Any, token: str) -> None:
    """Listing continues past a target that cannot be built, and says why."""
    response = client.get(
        "/mlops/api/deployments",
        params={"target": ["local", "no-such-target"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["deployments"], list)
    assert "local" not in body["unavailable"]
    assert "no-such-target" in body["unavailable"]


def test_health_of_an_unknown_service_is_404(client: Any, token: str) -> None:
    response = client.get(
        "/mlops/api/deployments/local/not-deployed/health", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 404
