"""The Airflow UI plugin: an ``MLOps`` nav entry and the ``/mlops`` app behind it.

Registered on the ``airflow.plugins`` entry point (``pyproject.toml``); ``plugins/`` holds a
drop-in file for deployments that use the plugins folder instead.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_mlops.plugin.app import create_app

__all__ = ["URL_PREFIX", "MlopsPlugin"]

#: Where Airflow's API server mounts the plugin app.
URL_PREFIX = "/mlops"


class MlopsPlugin(AirflowPlugin):
    """Models, versions, deployments and service health in the Airflow UI."""

    name = "airflow_mlops"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "MLOps"}]
    # Airflow 3's nav link: the UI shows the page (served by the app above) in an iframe.
    external_views = [
        {
            "name": "MLOps",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "mlops",
        }
    ]
