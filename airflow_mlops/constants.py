"""Names that the whole provider shares: service states, tag and label keys, defaults.

Every state, tag and label is named here once and imported everywhere else.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "DEFAULT_BASE_IMAGE",
    "DEFAULT_SCORING_PORT",
    "LABEL_PREFIX",
    "TAG_DEPLOYMENT_PREFIX",
    "TAG_IMAGE_PREFIX",
    "ServiceState",
    "mlops_home",
]


class ServiceState(StrEnum):
    """The state of a deployed web service, as Azure Machine Learning names it."""

    TRANSITIONING = "Transitioning"
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    UNSCHEDULABLE = "Unschedulable"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        """Tell whether waiting longer cannot change the outcome."""
        return self in (ServiceState.HEALTHY, ServiceState.FAILED)


#: Port the scoring service listens on inside an image (Azure ML's inference server uses 5001).
DEFAULT_SCORING_PORT = 5001

#: Base image for scoring images; a setting, so that air-gapped builds can name a local one.
DEFAULT_BASE_IMAGE = "python:3.11-slim"

#: Prefix of Docker / Kubernetes labels and annotations that carry a deployment's state.
LABEL_PREFIX = "io.airflow-mlops"

#: Model-version tag keys that record who uses a version (the delete guard reads them).
TAG_DEPLOYMENT_PREFIX = "mlops.deployment."
TAG_IMAGE_PREFIX = "mlops.image."


def mlops_home() -> str:
    """Return the folder where the embedded default keeps its state (under ``$AIRFLOW_HOME``)."""
    import os

    airflow_home = os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    return os.environ.get("MLOPS_HOME") or os.path.join(airflow_home, "mlops")
