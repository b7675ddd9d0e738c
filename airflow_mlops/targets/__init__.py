"""Deployment targets: one module per place a scoring service runs."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from airflow_mlops.exceptions import ConfigError
from airflow_mlops.targets.base import (
    DeploymentTarget,
    ModelRef,
    ServiceInfo,
    ServiceKeys,
    ServiceSpec,
    ServiceStatus,
)

__all__ = [
    "TARGETS",
    "DeploymentTarget",
    "ModelRef",
    "ServiceInfo",
    "ServiceKeys",
    "ServiceSpec",
    "ServiceStatus",
    "get_target",
]

#: Target name -> "module:class"; imported lazily so ``local`` needs no Docker or Kubernetes client.
TARGETS: dict[str, str] = {
    "local": "airflow_mlops.targets.local:LocalTarget",
    "docker": "airflow_mlops.targets.docker:DockerTarget",
    "aks": "airflow_mlops.targets.aks:AksTarget",
    "aci": "airflow_mlops.targets.aci:AciTarget",
    "edge": "airflow_mlops.targets.edge:EdgeTarget",
}


def get_target(name: str, **kwargs: Any) -> DeploymentTarget:
    """Return the target called ``name``, built with ``kwargs``."""
    try:
        module_name, class_name = TARGETS[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None
    target_cls = getattr(import_module(module_name), class_name)
    return target_cls(**kwargs)
