"""The scoring container every cloud target runs: one description, three renderings.

AKS, ACI and IoT Edge run the same scoring image the same way: listening on
:data:`~airflow_mlops.constants.DEFAULT_SCORING_PORT`, configured through ``MLOPS_*``
environment variables (the scoring CLI reads every flag from one), with the keys file
mounted read-only from a secret, and probed on ``/health/live`` and ``/health/ready``.
:func:`container_spec` decides all of that once; each target only renders it in its
platform's object model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from airflow_mlops.constants import DEFAULT_SCORING_PORT, LABEL_PREFIX
from airflow_mlops.exceptions import ConfigError
from airflow_mlops.targets.base import ServiceKeys, ServiceSpec

__all__ = [
    "KEYS_FILE_NAME",
    "KEYS_MOUNT_DIR",
    "LIVENESS_PATH",
    "READINESS_PATH",
    "STATE_IMAGE",
    "STATE_MANIFEST_HASH",
    "STATE_MODELS",
    "STATE_SERVICE",
    "ContainerSpec",
    "check_service_name",
    "container_spec",
    "models_from_state",
]

LIVENESS_PATH = "/health/live"
READINESS_PATH = "/health/ready"
KEYS_MOUNT_DIR = "/etc/mlops/keys"
KEYS_FILE_NAME = "keys.json"
CONTAINER_NAME = "scoring"

#: Keys of the labels / annotations / tags that carry a deployment's state on the platform.
STATE_SERVICE = f"{LABEL_PREFIX}/service"
STATE_MODELS = f"{LABEL_PREFIX}/models"
STATE_IMAGE = f"{LABEL_PREFIX}/image"
STATE_MANIFEST_HASH = f"{LABEL_PREFIX}/manifest-hash"
STATE_CONFIG = f"{LABEL_PREFIX}/config"
STATE_MANAGED_BY = f"{LABEL_PREFIX}/managed-by"
MANAGED_BY = "airflow-mlops"

# Environment entries whose names say they hold a credential go to the platform's secret
# store (a Kubernetes Secret, an ACI secure value), never into plain env or annotations.
_SECRET_ENV = re.compile(r"(CONNECTION_STRING|PASSWORD|SECRET|TOKEN|(^|_)KEY$|_KEY_)", re.IGNORECASE)
# Kubernetes Service names are DNS-1035 labels; ACI groups, DNS labels and Edge module names
# accept this subset too, so one rule keeps a name valid on every target.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class ContainerSpec:
    """How the scoring container runs, independent of the platform.

    :param name: service name (also the name of every object made for it).
    :param image: scoring image reference.
    :param port: port the scoring server listens on inside the container.
    :param env: plain environment (settings only, no credentials).
    :param secret_env: environment entries that are credentials (kept in the secret store).
    :param keys: the service keys, mounted as ``KEYS_MOUNT_DIR/keys.json`` (kept even when auth is
        off, so turning auth on later keeps them).
    :param cpu: CPU cores per replica.
    :param memory_gb: memory per replica, in GiB.
    :param gpu: GPUs per replica.
    :param state: platform labels/annotations/tags describing the deployment.
    """

    name: str
    image: str
    port: int
    env: dict[str, str]
    secret_env: dict[str, str]
    keys: ServiceKeys | None
    cpu: float
    memory_gb: float
    gpu: int
    state: dict[str, str] = field(default_factory=dict)

    @property
    def keys_file(self) -> str:
        """Return the path of the keys file inside the container."""
        return f"{KEYS_MOUNT_DIR}/{KEYS_FILE_NAME}"

    @property
    def keys_json(self) -> str:
        """Return the keys file's content (a secret: never log it)."""
        return json.dumps(self.keys.to_dict()) if self.keys else "{}"

    @property
    def memory_mib(self) -> int:
        """Return the memory per replica in MiB (whole numbers keep every platform happy)."""
        return max(1, round(self.memory_gb * 1024))


def check_service_name(name: str) -> str:
    """Return ``name`` if every cloud target accepts it, else raise :class:`ConfigError`."""
    if not _NAME.match(name or ""):
        raise ConfigError(
            f"service name {name!r} must be 1-63 lowercase letters, digits or '-', "
            "start with a letter and end with a letter or digit"
        )
    return name


def container_spec(spec: ServiceSpec, keys: ServiceKeys | None) -> ContainerSpec:
    """Decide how ``spec`` runs in a container: image, port, settings, secrets, resources, state.

    :param spec: what to deploy; ``spec.image`` is required.
    :param keys: the keys to mount (ignored when ``spec.config.auth_enabled`` is off).
    """
    check_service_name(spec.name)
    if not spec.image:
        raise ConfigError(f"service {spec.name!r}: cloud targets need an image (build one first)")
    config = spec.config
    env = {
        "MLOPS_HOST": "0.0.0.0",
        "MLOPS_PORT": str(DEFAULT_SCORING_PORT),
        "MLOPS_SERVICE_NAME": spec.name,
        "MLOPS_WORKERS": str(config.workers),
        "MLOPS_MAX_CONCURRENT_REQUESTS": str(config.max_concurrent_requests),
        "MLOPS_MAX_QUEUE": str(config.max_queue_length),
        "MLOPS_MAX_WAIT_MS": str(config.max_request_wait_ms),
        "MLOPS_MAX_BATCH_SIZE": str(config.max_batch_size),
        "MLOPS_MAX_BATCH_DELAY_US": str(config.max_batch_delay_us),
    }
    if config.auth_enabled:
        env["MLOPS_KEYS_FILE"] = f"{KEYS_MOUNT_DIR}/{KEYS_FILE_NAME}"
    else:
        env["MLOPS_AUTH"] = "off"
    if config.collect_model_data:
        env["MLOPS_COLLECT_SAMPLING"] = str(config.sampling_rate)
    if spec.entry_script:
        env["MLOPS_ENTRY_SCRIPT"] = spec.entry_script
    secret_env: dict[str, str] = {}
    for key, value in spec.environment.items():
        (secret_env if _SECRET_ENV.search(key) else env)[key] = str(value)
    return ContainerSpec(
        name=spec.name,
        image=spec.image,
        port=DEFAULT_SCORING_PORT,
        env=env,
        secret_env=secret_env,
        keys=keys,
        cpu=config.cpu_cores,
        memory_gb=config.memory_gb,
        gpu=config.gpu_cores,
        state=_state(spec),
    )


def _state(spec: ServiceSpec) -> dict[str, str]:
    models = [{"name": m.name, "version": m.version, "digest": m.digest} for m in spec.models]
    state = {
        STATE_SERVICE: spec.name,
        STATE_MANAGED_BY: MANAGED_BY,
        STATE_MODELS: json.dumps(models, separators=(",", ":")),
        STATE_IMAGE: spec.image or "",
        STATE_CONFIG: json.dumps(spec.config.to_dict(), separators=(",", ":")),
    }
    if spec.manifest_hash:
        state[STATE_MANIFEST_HASH] = spec.manifest_hash
    return state


def models_from_state(state: dict[str, Any] | None) -> list[dict[str, str]]:
    """Read the models a deployment serves back from its labels/annotations/tags."""
    try:
        models = json.loads((state or {}).get(STATE_MODELS) or "[]")
    except ValueError:
        return []
    return [m for m in models if isinstance(m, dict)]
