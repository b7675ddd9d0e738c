"""A per-service file lock shared by the targets that keep state on this machine."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from airflow_mlops.targets._container import check_service_name

__all__ = ["service_lock"]


@contextlib.contextmanager
def service_lock(home: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on service ``name`` under ``home`` (across processes)."""
    locks = home / ".locks"
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(locks / f"{check_service_name(name)}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
