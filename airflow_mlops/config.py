"""One typed deployment configuration for every target.

It reads Azure Machine Learning's ``deploymentconfig.json`` shape too (camelCase keys such as
``cpu_cores``/``cpuCores``, ``memoryGb``, ``autoScaler``), so a team can bring its files along.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from airflow_mlops.exceptions import ConfigError

__all__ = ["AutoscaleConfig", "DeploymentConfig"]


@dataclass(frozen=True)
class AutoscaleConfig:
    """Horizontal autoscaling (honoured where the platform scales: Kubernetes)."""

    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 10
    target_utilization: int = 70
    refresh_period_seconds: int = 1


@dataclass(frozen=True)
class DeploymentConfig:
    """How a scoring service runs: resources, load limits, auth and data collection.

    :param cpu_cores: CPU cores reserved per replica (a limit on Docker).
    :param memory_gb: memory per replica, in GiB.
    :param replicas: replicas when autoscaling is off.
    :param autoscale: autoscaling settings.
    :param max_concurrent_requests: requests scored at once per replica.
    :param max_queue_length: requests waiting per replica beyond those; more get ``503``.
    :param max_request_wait_ms: longest a request waits in the queue before ``503``.
    :param max_batch_size: largest dynamic batch for ONNX models with a free batch dimension.
    :param max_batch_delay_us: longest a request waits for a batch to fill, in microseconds.
    :param workers: scoring worker processes per replica.
    :param auth_enabled: require a key (``Authorization: Bearer <key>``).
    :param collect_model_data: record inputs and outputs of scored requests.
    :param sampling_rate: fraction of requests recorded when collection is on.
    :param enable_app_insights: emit service telemetry.
    :param port: port to listen on (local targets); ``None`` picks a free one.
    :param gpu_cores: GPUs per replica (recorded for Kubernetes; none here).
    """

    cpu_cores: float = 1.0
    memory_gb: float = 1.0
    replicas: int = 1
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    max_concurrent_requests: int = 4
    max_queue_length: int = 10
    max_request_wait_ms: int = 5000
    max_batch_size: int = 32
    max_batch_delay_us: int = 500
    workers: int = 1
    auth_enabled: bool = True
    collect_model_data: bool = False
    sampling_rate: float = 1.0
    enable_app_insights: bool = False
    port: int | None = None
    gpu_cores: int = 0

    def __post_init__(self) -> None:
        checks = {
            "cpu_cores": self.cpu_cores > 0,
            "memory_gb": self.memory_gb > 0,
            "replicas": self.replicas >= 1,
            "max_concurrent_requests": self.max_concurrent_requests >= 1,
            "max_queue_length": self.max_queue_length >= 0,
            "max_request_wait_ms": self.max_request_wait_ms > 0,
            "max_batch_size": self.max_batch_size >= 1,
            "max_batch_delay_us": self.max_batch_delay_us >= 0,
            "workers": self.workers >= 1,
            "sampling_rate": 0.0 <= self.sampling_rate <= 1.0,
            "port": self.port is None or 0 <= self.port <= 65535,
            "gpu_cores": self.gpu_cores >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid deployment config values: {', '.join(bad)}")

    # Azure ML deploymentconfig.json keys (both snake and camel case appear in the wild).
    _AZUREML_KEYS = {
        "cpu_cores": "cpu_cores",
        "cpuCores": "cpu_cores",
        "memory_gb": "memory_gb",
        "memoryInGB": "memory_gb",
        "memoryGb": "memory_gb",
        "num_replicas": "replicas",
        "numReplicas": "replicas",
        "gpu_cores": "gpu_cores",
        "gpuCores": "gpu_cores",
        "auth_enabled": "auth_enabled",
        "authEnabled": "auth_enabled",
        "collect_model_data": "collect_model_data",
        "collectModelData": "collect_model_data",
        "enable_app_insights": "enable_app_insights",
        "appInsightsEnabled": "enable_app_insights",
        "port": "port",
        "max_concurrent_requests_per_container": "max_concurrent_requests",
        "maxConcurrentRequestsPerContainer": "max_concurrent_requests",
        "max_request_wait_time": "max_request_wait_ms",
        "maxQueueWaitMs": "max_request_wait_ms",
    }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DeploymentConfig:
        """Build a config from our own keys or Azure ML's ``deploymentconfig.json`` keys.

        Unknown keys are an error, so a typo does not silently fall back to a default.
        """
        data = dict(data or {})
        data.pop("computeType", None)
        own = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        autoscale: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("autoscale", "autoScaler"):
                autoscale.update(_autoscale_from(value))
            elif key in own:
                values[key] = value
            elif key in cls._AZUREML_KEYS:
                values[cls._AZUREML_KEYS[key]] = value
            elif key in ("containerResourceRequirements",):
                values.update(cls._resources_from(value))
            elif key.startswith("autoscale_"):
                autoscale[_AUTOSCALE_KEYS.get(key, key)] = value
            else:
                raise ConfigError(f"unknown deployment config key {key!r}")
        if autoscale:
            values["autoscale"] = AutoscaleConfig(**autoscale)
        return cls(**values)

    @staticmethod
    def _resources_from(value: dict[str, Any]) -> dict[str, Any]:
        mapping = {"cpu": "cpu_cores", "memoryInGB": "memory_gb", "gpu": "gpu_cores"}
        return {mapping[k]: v for k, v in value.items() if k in mapping}

    @classmethod
    def from_file(cls, path: str | Path) -> DeploymentConfig:
        """Read a ``deploymentconfig.json`` (ours or Azure ML's)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read deployment config {path}: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def coerce(cls, value: DeploymentConfig | dict[str, Any] | str | None) -> DeploymentConfig:
        """Accept a config, a dict (as templated from Params), a JSON file path, or ``None``."""
        if isinstance(value, DeploymentConfig):
            return value
        if isinstance(value, str):
            return cls.from_file(value)
        return cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict that :meth:`from_dict` reads back."""
        return asdict(self)


_AUTOSCALE_KEYS = {
    "autoscale_enabled": "enabled",
    "autoscale_min_replicas": "min_replicas",
    "autoscale_max_replicas": "max_replicas",
    "autoscale_target_utilization": "target_utilization",
    "autoscale_refresh_seconds": "refresh_period_seconds",
}


def _autoscale_from(value: Any) -> dict[str, Any]:
    if isinstance(value, AutoscaleConfig):
        return asdict(value)
    if not isinstance(value, dict):
        raise ConfigError("autoscale must be a mapping")
    camel = {
        "autoscaleEnabled": "enabled",
        "minReplicas": "min_replicas",
        "maxReplicas": "max_replicas",
        "targetUtilization": "target_utilization",
        "refreshPeriodInSeconds": "refresh_period_seconds",
    }
    own = {f.name for f in fields(AutoscaleConfig)}
    out: dict[str, Any] = {}
    for key, val in value.items():
        name = camel.get(key, key)
        if name not in own:
            raise ConfigError(f"unknown autoscale key {key!r}")
        out[name] = val
    return out
