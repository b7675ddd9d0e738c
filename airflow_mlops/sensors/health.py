"""Wait until a deployed scoring service is ``Healthy``; fail at once when it is ``Failed``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.bases.sensor import PokeReturnValue

from airflow_mlops.constants import ServiceState
from airflow_mlops.exceptions import DeploymentError, DeploymentFailed, HealthTimeout
from airflow_mlops.hooks.deployment import DeploymentHook
from airflow_mlops.targets.base import ServiceStatus
from airflow_mlops.triggers.health import LOG_TAIL_LINES, ServiceHealthTrigger

__all__ = ["WaitHealthySensor"]

# The triggerer's own deadline fires first, so its "timeout" event (with the last state and
# reason) reaches execute_complete instead of a bare deferral timeout.
_DEFER_MARGIN = timedelta(seconds=60)


class WaitHealthySensor(BaseSensorOperator):
    """Wait until a scoring service is ``Healthy``.

    Fails at once, with the service's log tail, when the service is ``Failed``, and when it is
    not healthy after ``timeout`` seconds. Deferrable by default: the waiting happens on the
    triggerer and holds no worker slot.

    :param service_name: the service (templated).
    :param target: target it runs on (templated).
    :param timeout: seconds to wait in total.
    :param poke_interval: seconds between checks.
    :param deferrable: wait on the triggerer instead of a worker.
    :param target_kwargs: JSON-able keyword arguments for the target's constructor (templated).
    :param mlflow_conn_id: registry connection (used only for logs and keys, not states).
    """

    template_fields: Sequence[str] = ("service_name", "target", "target_kwargs")
    ui_color = "#c8e6c9"

    def __init__(
        self,
        *,
        service_name: str,
        target: str = "local",
        timeout: float = 600,
        poke_interval: float = 5,
        deferrable: bool = True,
        target_kwargs: dict[str, Any] | None = None,
        mlflow_conn_id: str = DeploymentHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(timeout=timeout, poke_interval=poke_interval, **kwargs)
        self.service_name = service_name
        self.target = target
        self.deferrable = deferrable
        self.target_kwargs = target_kwargs or {}
        self.mlflow_conn_id = mlflow_conn_id

    @property
    def hook(self) -> DeploymentHook:
        """Return a deployment hook for the target."""
        return DeploymentHook(self.target, self.mlflow_conn_id, self.target_kwargs)

    def _result(self, state: str, reason: str = "") -> dict[str, Any]:
        return {"service": self.service_name, "target": self.target, "state": state, "reason": reason}

    def _fail(self, hook: DeploymentHook, status: ServiceStatus) -> DeploymentFailed:
        try:
            log_tail = hook.get_logs(self.service_name, LOG_TAIL_LINES)
        except DeploymentError as e:
            log_tail = f"(log tail unavailable: {e})"
        self.log.error("Service %s is %s: %s\n%s", self.service_name, status.state, status.reason, log_tail)
        return DeploymentFailed(
            self.service_name, state=status.state.value, reason=status.reason, log_tail=log_tail
        )

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        hook = self.hook
        status = hook.get_service_state(self.service_name)
        self.log.info("Service %s is %s %s", self.service_name, status.state, status.reason)
        if status.state is ServiceState.HEALTHY:
            return self._result(status.state.value)
        if status.state is ServiceState.FAILED:
            raise self._fail(hook, status)
        self.defer(
            trigger=ServiceHealthTrigger(
                service_name=self.service_name,
                target=self.target,
                target_kwargs=self.target_kwargs,
                poll_interval=float(self.poke_interval),
                deadline=time.time() + float(self.timeout),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)) + _DEFER_MARGIN,
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        hook = self.hook
        status = hook.get_service_state(self.service_name)
        self.log.info("Service %s is %s %s", self.service_name, status.state, status.reason)
        if status.state is ServiceState.FAILED:
            raise self._fail(hook, status)
        if status.state is ServiceState.HEALTHY:
            return PokeReturnValue(is_done=True, xcom_value=self._result(status.state.value))
        return False

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Turn the trigger's event into a result or a typed exception."""
        if not isinstance(event, dict) or "status" not in event:
            raise ValueError(f"unexpected trigger event: {event!r}")
        status = event["status"]
        state = event.get("state") or "unknown"
        reason = event.get("reason") or ""
        if status == "success":
            self.log.info("Service %s is %s", self.service_name, state)
            return self._result(state, reason)
        if status == "failed":
            log_tail = event.get("log_tail") or ""
            self.log.error("Service %s is %s: %s\n%s", self.service_name, state, reason, log_tail)
            raise DeploymentFailed(self.service_name, state=state, reason=reason, log_tail=log_tail)
        if status == "timeout":
            raise HealthTimeout(self.service_name, state=state, timeout=float(self.timeout), reason=reason)
        if status == "error":
            raise DeploymentError(
                str(event.get("message") or "health check failed"), service=self.service_name
            )
        raise ValueError(f"unexpected trigger event status {status!r}: {event!r}")
