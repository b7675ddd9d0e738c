"""Typed settings of the scoring service, read from CLI flags and ``MLOPS_*`` env vars.

Every flag ``--some-flag`` also reads env ``MLOPS_SOME_FLAG``; a flag given on the command
line wins. A bad value (a port that is not a number, a sampling rate above 1, a missing
model folder, no keys file without ``--no-auth``) stops the service at once with a message
naming the setting: a scoring service that starts half-configured is worse than one that
does not start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Keys", "Settings", "SettingsError", "build_parser", "load_keys"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class SettingsError(ValueError):
    """A setting is missing or has a bad value; the message names it."""


@dataclass(frozen=True)
class Keys:
    """The primary and secondary key callers authenticate with."""

    primary: str
    secondary: str | None = None

    def __repr__(self) -> str:  # keys never reach a log line through a repr
        return "Keys(primary=***, secondary=***)"


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to start; build with :meth:`from_args` or directly."""

    model_dir: Path | None = None
    entry_script: Path | None = None
    host: str = "127.0.0.1"
    port: int = 5001
    keys_file: Path | None = None
    no_auth: bool = False
    service_name: str = "scoring"
    manifest: Path | None = None
    reuse_port: bool = False
    workers: int = 1
    max_concurrent_requests: int = 256
    max_queue: int = 1024
    max_wait_ms: float = 5000.0
    scoring_timeout_ms: float = 60000.0
    max_batch_size: int = 256
    max_batch_delay_us: int = 0
    inline_max_us: int = 100
    max_body_bytes: int = 10 * 1024 * 1024
    collect_sink: str | None = None
    collect_sampling: float = 1.0
    collect_azure_connection_string: str | None = dataclasses.field(default=None, repr=False)
    ort_threads: int = 0
    log_level: str = "info"

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool]] = [
            ("port", 0 <= self.port <= 65535),
            ("workers", self.workers >= 1),
            ("max-concurrent-requests", self.max_concurrent_requests >= 1),
            ("max-queue", self.max_queue >= 0),
            ("max-wait-ms", self.max_wait_ms > 0),
            ("scoring-timeout-ms", self.scoring_timeout_ms > 0),
            ("max-batch-size", self.max_batch_size >= 1),
            ("max-batch-delay-us", self.max_batch_delay_us >= 0),
            ("inline-max-us", self.inline_max_us >= 0),
            ("max-body-bytes", self.max_body_bytes >= 1),
            ("collect-sampling", 0.0 <= self.collect_sampling <= 1.0),
            ("ort-threads", self.ort_threads >= 0),
        ]
        for name, ok in checks:
            if not ok:
                value = getattr(self, name.replace("-", "_"))
                raise SettingsError(f"--{name}: {value!r} is out of range")
        if self.model_dir is None and self.entry_script is None:
            raise SettingsError("--model-dir (MLOPS_MODEL_DIR or AZUREML_MODEL_DIR) is required")
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise SettingsError(f"--model-dir: {self.model_dir} is not a folder")
        if self.entry_script is not None and not self.entry_script.is_file():
            raise SettingsError(f"--entry-script: {self.entry_script} is not a file")
        if self.manifest is not None and not self.manifest.is_file():
            raise SettingsError(f"--manifest: {self.manifest} is not a file")
        if not self.no_auth and self.keys_file is None:
            raise SettingsError(
                "no --keys-file (MLOPS_KEYS_FILE) given: refusing to serve without authentication; "
                "pass --no-auth (MLOPS_AUTH=off) to serve without keys"
            )
        if self.keys_file is not None and not self.no_auth:
            load_keys(self.keys_file)  # fail now, not on the first request

    @property
    def auth(self) -> bool:
        """Return whether requests to the scoring routes need a key."""
        return not self.no_auth

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from command-line flags, falling back to ``MLOPS_*`` env vars.

        :param argv: the arguments (``sys.argv[1:]`` when None)
        :param env: the environment (``os.environ`` when None)
        :raises SettingsError: a value is missing or out of range
        """
        env = os.environ if env is None else env
        ns = build_parser().parse_args(argv)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            flag = field.name
            given = getattr(ns, flag, None)
            if given is not None and given is not False:
                values[flag] = given
                continue
            raw = env.get("MLOPS_" + flag.upper())
            if flag == "model_dir" and raw is None:
                raw = env.get("AZUREML_MODEL_DIR")
            if flag == "no_auth" and raw is None and "MLOPS_AUTH" in env:
                raw = "true" if env["MLOPS_AUTH"].strip().lower() in ("off", "false", "0", "no") else "false"
            if raw is not None:
                values[flag] = _convert(flag, raw)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """Return these settings as ``MLOPS_*`` variables (handed to worker processes)."""
        out: dict[str, str] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            out["MLOPS_" + field.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def _to_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "model_dir": Path,
    "entry_script": Path,
    "keys_file": Path,
    "manifest": Path,
    "port": int,
    "workers": int,
    "max_concurrent_requests": int,
    "max_queue": int,
    "max_wait_ms": float,
    "scoring_timeout_ms": float,
    "max_batch_size": int,
    "max_batch_delay_us": int,
    "inline_max_us": int,
    "max_body_bytes": int,
    "collect_sampling": float,
    "ort_threads": int,
    "no_auth": _to_bool,
    "reuse_port": _to_bool,
}


def _convert(flag: str, raw: str) -> Any:
    convert = _CONVERTERS.get(flag, str)
    try:
        return convert(raw)
    except ValueError as e:
        raise SettingsError(f"MLOPS_{flag.upper()}: {e}") from e


def load_keys(path: Path) -> Keys:
    """Read ``{"primary_key": ..., "secondary_key": ...}`` from ``path``.

    :raises SettingsError: the file is missing, not JSON, or has no primary key
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise SettingsError(f"--keys-file: cannot read {path}: {e.strerror}") from e
    except ValueError as e:
        raise SettingsError(f"--keys-file: {path} is not JSON") from e
    primary = data.get("primary_key") if isinstance(data, dict) else None
    secondary = data.get("secondary_key") if isinstance(data, dict) else None
    if not isinstance(primary, str) or not primary:
        raise SettingsError(f'--keys-file: {path} has no non-empty "primary_key"')
    if secondary is not None and (not isinstance(secondary, str) or not secondary):
        raise SettingsError(f'--keys-file: {path} has an empty or non-string "secondary_key"')
    return Keys(primary=primary, secondary=secondary)


def _positive_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from e


def build_parser() -> argparse.ArgumentParser:
    """Return the ``mlops-serve`` argument parser (defaults are None: env vars fill gaps)."""
    p = argparse.ArgumentParser(
        prog="mlops-serve",
        description="Serve an ONNX model or an Azure ML entry script over HTTP. "
        "Every flag also reads env MLOPS_<FLAG_IN_UPPER_SNAKE>.",
    )
    p.add_argument(
        "--model-dir", type=Path, help="folder holding the model (env MLOPS_MODEL_DIR or AZUREML_MODEL_DIR)"
    )
    p.add_argument("--entry-script", type=Path, help="Azure ML entry script with init() and run(raw_data)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_positive_int, help="port to bind (default 5001)")
    p.add_argument("--keys-file", type=Path, help='JSON {"primary_key": ..., "secondary_key": ...}')
    p.add_argument(
        "--no-auth", action="store_true", default=None, help="serve without keys (env MLOPS_AUTH=off)"
    )
    p.add_argument("--service-name", help="service name, reported by /version and used for collected data")
    p.add_argument("--manifest", type=Path, help='image manifest JSON {"hash": ..., "models": [...]}')
    p.add_argument("--reuse-port", action="store_true", default=None, help="bind with SO_REUSEPORT")
    p.add_argument("--workers", type=_positive_int, help="worker processes (default 1)")
    p.add_argument("--max-concurrent-requests", type=_positive_int, help="requests processed at once (256)")
    p.add_argument("--max-queue", type=_positive_int, help="requests waiting for a slot (1024)")
    p.add_argument("--max-wait-ms", type=float, help="longest wait for a slot or a batch, ms (5000)")
    p.add_argument("--scoring-timeout-ms", type=float, help="longest model run before a 504, ms (60000)")
    p.add_argument("--max-batch-size", type=_positive_int, help="most rows per dynamic batch (256)")
    p.add_argument("--max-batch-delay-us", type=_positive_int, help="longest wait to fill a batch, µs (0)")
    p.add_argument(
        "--inline-max-us",
        type=_positive_int,
        help="a model call (one batch) estimated under this many µs runs on the event loop "
        "instead of the model thread; 0: every call on the thread (100)",
    )
    p.add_argument("--max-body-bytes", type=_positive_int, help="largest request body (10 MiB)")
    p.add_argument("--collect-sink", help="folder, file:// URL or azureblob://<container>/<prefix>")
    p.add_argument("--collect-sampling", type=float, help="fraction of requests collected, 0..1 (1)")
    p.add_argument(
        "--ort-threads",
        type=_positive_int,
        help="onnxruntime intra-op threads (0: 1 for a cheap model, one per core for a compute-bound one)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level (info)")
    return p
