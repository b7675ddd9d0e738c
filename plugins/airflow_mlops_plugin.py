"""Drop-in for Airflow's plugins folder: exposes the MLOps UI plugin.

Installing the ``airflow-mlops`` distribution already registers the plugin through the
``airflow.plugins`` entry point; copy this file into ``$AIRFLOW_HOME/plugins`` only where
entry points are not used. Use one or the other, not both (the plugin name must be unique).
"""

from __future__ import annotations

from airflow_mlops.plugin import MlopsPlugin

__all__ = ["MlopsPlugin"]
