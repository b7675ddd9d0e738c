"""The airflow-mlops scoring service. It never imports Airflow."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
