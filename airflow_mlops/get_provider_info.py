"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_mlops import __version__

__all__ = ["get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """Return what ``airflow providers list`` and the connection form need to know."""
    return {
        "package-name": "airflow-mlops",
        "name": "MLOps",
        "description": "Register, package, deploy, monitor and retrain machine-learning models.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "MLOps",
                "external-doc-url": "https://github.com/airflow-mlops/airflow-mlops",
                "tags": ["software"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "mlflow",
                "hook-class-name": "airflow_mlops.hooks.registry.MlflowRegistryHook",
                "hook-name": "MLflow Model Registry",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {
                        "host": "Tracking URI",
                        "login": "Username (basic auth, optional)",
                        "password": "Password (basic auth, optional)",
                    },
                    "placeholders": {"host": "http://mlflow.example:5000"},
                },
                "conn-fields": {
                    "registry_uri": {
                        "label": "Registry URI (optional)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "token": {
                        "label": "Bearer token (optional)",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "insecure_tls": {
                        "label": "Skip TLS verification",
                        "schema": {"type": ["boolean", "null"]},
                    },
                },
            },
        ],
        "hooks": [
            {
                "integration-name": "MLOps",
                "python-modules": [
                    "airflow_mlops.hooks.registry",
                    "airflow_mlops.hooks.deployment",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": "MLOps",
                "python-modules": [
                    "airflow_mlops.operators.registry",
                    "airflow_mlops.operators.image",
                    "airflow_mlops.operators.deploy",
                    "airflow_mlops.operators.monitoring",
                    "airflow_mlops.operators.retrain",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "MLOps",
                "python-modules": ["airflow_mlops.sensors.health", "airflow_mlops.sensors.drift"],
            }
        ],
        "triggers": [
            {
                "integration-name": "MLOps",
                "python-modules": ["airflow_mlops.triggers.health"],
            }
        ],
        "extra-links": ["airflow_mlops.operators.deploy.ScoringServiceLink"],
    }
