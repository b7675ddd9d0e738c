"""airflow-mlops: the machine-learning model lifecycle as Apache Airflow building blocks."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
