"""Exceptions raised by airflow-mlops.

The tree::

    MlopsError
    ├── ConfigError                 a setting is missing or malformed
    ├── RegistryError               the MLflow registry refused or failed
    │   ├── ModelNotFound
    │   └── ModelInUseError         delete refused: an image or deployment uses the version
    ├── ImageBuildError             docker build failed (carries the build log tail)
    ├── DeploymentError             a target refused or failed
    │   ├── DeploymentNotFound
    │   ├── DeploymentFailed        the service reached ``Failed`` (carries state and log tail)
    │   ├── HealthTimeout           the service did not become ``Healthy`` in time
    │   ├── UpdateFailed            an in-place update was refused; the old version still serves
    │   └── UpdateNotVerified       after the switch, GET /version reports something else
    └── MonitoringError             collected data or drift could not be read or computed

Each carries the context a person needs to act (service, state, log tail, remote reason).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeploymentError",
    "DeploymentFailed",
    "DeploymentNotFound",
    "HealthTimeout",
    "ImageBuildError",
    "MlopsError",
    "ModelInUseError",
    "ModelNotFound",
    "MonitoringError",
    "RegistryError",
    "UpdateFailed",
    "UpdateNotVerified",
]


class MlopsError(Exception):
    """Base class of every error airflow-mlops raises."""


class ConfigError(MlopsError):
    """A setting is missing or malformed."""


class RegistryError(MlopsError):
    """The model registry refused or failed an operation."""


class ModelNotFound(RegistryError):
    """No model version matches the name and version (or alias) asked for."""


class ModelInUseError(RegistryError):
    """A model version cannot be deleted because images or deployments use it."""

    def __init__(self, name: str, version: str | int, users: list[str]) -> None:
        self.name = name
        self.version = str(version)
        self.users = list(users)
        super().__init__(
            f"model {name!r} version {self.version} is in use by {', '.join(self.users)}; "
            "delete or update those first"
        )


class ImageBuildError(MlopsError):
    """Building a scoring image failed."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(f"{message}\n--- build log tail ---\n{log_tail}" if log_tail else message)


class DeploymentError(MlopsError):
    """A deployment target refused or failed an operation."""

    def __init__(self, message: str, *, service: str | None = None) -> None:
        self.service = service
        super().__init__(message)


class DeploymentNotFound(DeploymentError):
    """No deployment of that name exists on the target."""


class DeploymentFailed(DeploymentError):
    """The service reached the ``Failed`` state."""

    def __init__(self, service: str, *, state: str, reason: str = "", log_tail: str = "") -> None:
        self.state = state
        self.reason = reason
        self.log_tail = log_tail
        message = f"service {service!r} is {state}"
        if reason:
            message += f": {reason}"
        if log_tail:
            message += f"\n--- service log tail ---\n{log_tail}"
        super().__init__(message, service=service)


class HealthTimeout(DeploymentError):
    """The service did not become ``Healthy`` before the timeout."""

    def __init__(self, service: str, *, state: str, timeout: float, reason: str = "") -> None:
        self.state = state
        self.timeout = timeout
        self.reason = reason
        message = f"service {service!r} still {state} after {timeout:g} s"
        if reason:
            message += f": {reason}"
        super().__init__(message, service=service)


class UpdateFailed(DeploymentError):
    """An in-place update did not complete; the previous version keeps serving."""

    def __init__(self, service: str, reason: str, *, log_tail: str = "") -> None:
        self.reason = reason
        self.log_tail = log_tail
        message = f"update of service {service!r} failed, previous version still serving: {reason}"
        if log_tail:
            message += f"\n--- new version log tail ---\n{log_tail}"
        super().__init__(message, service=service)


class UpdateNotVerified(DeploymentError):
    """After the switch, the service does not report what was deployed (stale or rolled back)."""

    def __init__(self, service: str, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"update of service {service!r} switched traffic but could not be verified: {reason}",
            service=service,
        )


class MonitoringError(MlopsError):
    """Collected data or drift statistics could not be read or computed."""
