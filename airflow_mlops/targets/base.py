"""The one small interface every deployment target implements.

A target keeps a deployment's state where its platform keeps it (a state file for
``local``, container labels for ``docker``, Kubernetes labels and annotations, ACI tags), not
in a database of ours, so ``status``/``list``/``update``/``delete`` work from any later task.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from airflow_mlops.config import DeploymentConfig
from airflow_mlops.constants import ServiceState

__all__ = [
    "DeploymentTarget",
    "ModelRef",
    "ServiceInfo",
    "ServiceKeys",
    "ServiceSpec",
    "ServiceStatus",
]


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, materialised in a local folder.

    :param name: registered model name.
    :param version: registered version.
    :param path: local folder holding the model's files.
    :param digest: ``sha256:<hex>`` over the folder's files (names and contents).
    :param uri: where the registry keeps it (``models:/name/version``).
    """

    name: str
    version: str
    path: str
    digest: str
    uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServiceKeys:
    """A service's primary and secondary key; either authorises a request."""

    primary_key: str
    secondary_key: str

    @classmethod
    def generate(cls) -> ServiceKeys:
        """Make two fresh random keys."""
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32))

    def to_dict(self) -> dict[str, str]:
        """Return the keys as the keys file holds them (never log or XCom this)."""
        return {"primary_key": self.primary_key, "secondary_key": self.secondary_key}

    def __repr__(self) -> str:  # keys never reach logs through a repr
        return "ServiceKeys(primary_key=***, secondary_key=***)"


@dataclass(frozen=True)
class ServiceSpec:
    """What to deploy.

    :param name: service name, unique per target.
    :param models: the model versions it serves.
    :param config: resources, limits, auth and collection settings.
    :param entry_script: Azure ML-style scoring script (``init()``/``run()``), relative to
        ``source_dir``; ``None`` serves an ONNX model directly.
    :param source_dir: folder holding the entry script and what it imports.
    :param image: scoring image reference (container targets).
    :param manifest_hash: hash of the image manifest, reported by ``GET /version``.
    :param keys: keys to use; ``None`` generates them on deploy and keeps them on update.
    :param environment: extra environment variables for the service.
    """

    name: str
    models: tuple[ModelRef, ...]
    config: DeploymentConfig = field(default_factory=DeploymentConfig)
    entry_script: str | None = None
    source_dir: str | None = None
    image: str | None = None
    manifest_hash: str | None = None
    keys: ServiceKeys | None = None
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceStatus:
    """A service's state and, when not healthy, why."""

    state: ServiceState
    reason: str = ""


@dataclass
class ServiceInfo:
    """What a target knows of one deployment; JSON-able through :meth:`to_dict`."""

    name: str
    target: str
    url: str
    state: ServiceState
    models: list[dict[str, str]] = field(default_factory=list)
    image: str | None = None
    manifest_hash: str | None = None
    auth_enabled: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def scoring_uri(self) -> str:
        """Return the Azure ML-style scoring URI (``<url>/score``)."""
        return f"{self.url.rstrip('/')}/score"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["scoring_uri"] = self.scoring_uri
        return data


class DeploymentTarget(ABC):
    """A place where scoring services run.

    Implementations take their clients in ``__init__`` (so tests can inject them) and
    raise :class:`~airflow_mlops.exceptions.DeploymentError` subclasses.
    """

    #: Name used in ``DeployServiceOperator(target=...)``.
    name: ClassVar[str]

    @abstractmethod
    def deploy(self, spec: ServiceSpec) -> ServiceInfo:
        """Start a new service; fail if one of that name exists."""

    @abstractmethod
    def update(self, spec: ServiceSpec) -> ServiceInfo:
        """Replace what a service runs in place; the URL and keys stay the same."""

    @abstractmethod
    def status(self, name: str) -> ServiceStatus:
        """Return the service's state, probing its health routes where it can."""

    @abstractmethod
    def logs(self, name: str, tail: int = 100) -> str:
        """Return the last ``tail`` lines of the service's output."""

    @abstractmethod
    def keys(self, name: str) -> ServiceKeys:
        """Return the service's keys."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Stop the service and remove everything the target made for it."""

    @abstractmethod
    def list(self, model: str | None = None, image: str | None = None) -> list[ServiceInfo]:
        """List services, optionally only those serving a model name or running an image."""

    @abstractmethod
    def get(self, name: str) -> ServiceInfo:
        """Return one service's record; raise ``DeploymentNotFound`` if there is none."""
