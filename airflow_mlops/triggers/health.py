"""Wait for a scoring service to become healthy on the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_mlops.constants import ServiceState
from airflow_mlops.exceptions import DeploymentNotFound, MlopsError

__all__ = ["ServiceHealthTrigger"]

#: Consecutive failed status checks (target unreachable) tolerated before giving up.
MAX_CONSECUTIVE_ERRORS = 5
#: Lines of the service's output sent with a ``failed`` event.
LOG_TAIL_LINES = 50


class ServiceHealthTrigger(BaseTrigger):
    """Poll a service's state until it is ``Healthy``, ``Failed``, or the deadline passes.

    Yields one event ``{"status": "success" | "failed" | "timeout" | "error", "message",
    "service", "state", "reason", "log_tail"}``.

    :param service_name: the service.
    :param target: target name (``local``, ``docker``, ...).
    :param target_kwargs: JSON-able keyword arguments for the target's constructor.
    :param poll_interval: seconds between checks.
    :param deadline: wall-clock time (epoch seconds) after which it yields ``timeout``.
    """

    def __init__(
        self,
        service_name: str,
        target: str = "local",
        target_kwargs: dict[str, Any] | None = None,
        poll_interval: float = 5.0,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        self.service_name = service_name
        self.target = target
        self.target_kwargs = dict(target_kwargs or {})
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline) if deadline is not None else time.time() + 600.0

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "service_name": self.service_name,
                "target": self.target,
                "target_kwargs": self.target_kwargs,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
            },
        )

    def _event(
        self, status: str, message: str, state: str | None, reason: str = "", log_tail: str = ""
    ) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "message": message,
                "service": self.service_name,
                "target": self.target,
                "state": state,
                "reason": reason,
                "log_tail": log_tail,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_mlops.targets import get_target

        try:
            target = await asyncio.to_thread(get_target, self.target, **self.target_kwargs)
        except MlopsError as e:
            yield self._event("error", f"cannot open target {self.target!r}: {e}", None)
            return
        remaining = max(0.0, self.deadline - time.time())
        attempts = max(1, math.ceil(remaining / max(self.poll_interval, 0.01)) + 1)
        errors = 0
        state: str | None = None
        reason = ""
        for attempt in range(attempts):
            try:
                status = await asyncio.to_thread(target.status, self.service_name)
            except DeploymentNotFound as e:
                yield self._event("error", str(e), None)
                return
            except MlopsError as e:
                errors += 1
                reason = f"status check failed: {e}"
                if errors >= MAX_CONSECUTIVE_ERRORS:
                    yield self._event("error", f"service {self.service_name!r}: {reason}", state, reason)
                    return
            else:
                errors = 0
                state, reason = status.state.value, status.reason
                if status.state is ServiceState.HEALTHY:
                    yield self._event("success", f"service {self.service_name!r} is {state}", state)
                    return
                if status.state is ServiceState.FAILED:
                    log_tail = await self._log_tail(target)
                    message = f"service {self.service_name!r} is {state}: {reason}"
                    yield self._event("failed", message, state, reason, log_tail)
                    return
            wait = min(self.poll_interval, self.deadline - time.time())
            if wait <= 0 or attempt == attempts - 1:
                break
            await asyncio.sleep(wait)
        yield self._event(
            "timeout",
            f"service {self.service_name!r} still {state or 'unknown'} at the deadline",
            state,
            reason,
        )

    async def _log_tail(self, target: Any) -> str:
        try:
            return await asyncio.to_thread(target.logs, self.service_name, LOG_TAIL_LINES)
        except MlopsError as e:
            return f"(log tail unavailable: {e})"
