"""The provider is found through its entry point, by Python and by ``airflow providers list``."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

#: Hook modules owned so far; each listed module must import.
OWNED_HOOK_MODULES = ["airflow_mlops.hooks.registry"]


def _provider_info() -> dict:
    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_mlops.")]
    return ep.load()()


def test_get_provider_info_is_found_through_the_entry_point() -> None:
    info = _provider_info()
    assert info["package-name"] == "airflow-mlops"
    conn_types = {c["connection-type"]: c["hook-class-name"] for c in info["connection-types"]}
    assert conn_types["mlflow"] == "airflow_mlops.hooks.registry.MlflowRegistryHook"
    listed = [m for h in info["hooks"] for m in h["python-modules"]]
    for module in OWNED_HOOK_MODULES:
        assert module in listed
        importlib.import_module(module)


def test_connection_type_matches_the_hook() -> None:
    from airflow_mlops.hooks.registry import MlflowRegistryHook

    info = _provider_info()
    (conn,) = [c for c in info["connection-types"] if c["connection-type"] == MlflowRegistryHook.conn_type]
    module, _, cls = conn["hook-class-name"].rpartition(".")
    assert getattr(importlib.import_module(module), cls) is MlflowRegistryHook
    # Airflow 3.2+ reads the form from provider info; the hook's classmethod must say the same.
    behaviour = MlflowRegistryHook.get_ui_field_behaviour()
    assert conn["hook-name"] == MlflowRegistryHook.hook_name
    assert conn["ui-field-behaviour"]["relabeling"] == behaviour["relabeling"]
    assert conn["ui-field-behaviour"]["hidden-fields"] == behaviour["hidden_fields"]
    assert set(conn["conn-fields"]) == {"registry_uri", "token", "insecure_tls"}
    assert conn["conn-fields"]["token"]["schema"]["format"] == "password"  # masked in the UI


def test_the_connection_form_reaches_airflow() -> None:
    """Airflow's providers manager picks up the labels and extra fields without importing wtforms."""
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.field_behaviours["mlflow"]["relabeling"]["host"] == "Tracking URI"
    widgets = manager.connection_form_widgets
    assert {"extra__mlflow__registry_uri", "extra__mlflow__token", "extra__mlflow__insecure_tls"} <= set(
        widgets
    )
    assert widgets["extra__mlflow__token"].is_sensitive


@pytest.mark.slow
def test_airflow_providers_list_shows_the_provider() -> None:
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "providers", "list", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ},  # tests/conftest.py set the session's AIRFLOW_HOME
    )
    assert result.returncode == 0, result.stderr[-3000:]
    providers = json.loads(result.stdout[result.stdout.index("[") :])
    assert "airflow-mlops" in {p["package_name"] for p in providers}
