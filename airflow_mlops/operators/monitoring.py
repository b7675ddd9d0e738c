"""Collect a window of a scoring service's recorded requests into one Parquet dataset."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_mlops.constants import mlops_home
from airflow_mlops.monitoring.collected import collect_window, parse_window

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["CollectDataOperator", "collected_asset"]


def collected_asset(service_name: str) -> Asset:
    """Return the Asset a collection of ``service_name`` updates: ``mlops://collected/<service>``."""
    return Asset(f"mlops://collected/{service_name}")


class CollectDataOperator(BaseOperator):
    """Read a time window of a service's collected requests and write one Parquet dataset.

    On success it emits an event on the Asset ``mlops://collected/<service>`` whose ``extra``
    carries ``path``, ``rows``, ``window_start`` and ``window_end``, so a retraining DAG can be
    scheduled on it; XCom gets ``{"path", "rows", "window_start", "window_end", ...}``.

    A window with no rows is **skipped** (``AirflowSkipException``): no file, no Asset event,
    so nothing downstream runs on empty data. The default window is the run's data interval;
    runs without one, or with a zero-length one (triggered by hand or through the API), read
    the ``lookback`` before the interval's end (or before now).

    :param service_name: the scoring service. Not templated: it names the Asset at parse time.
    :param window_start: window start, ISO-8601 or datetime (templated).
    :param window_end: window end, exclusive (templated).
    :param lookback: window length when ``window_start`` is empty.
    :param sink: where the service collects to: ``None`` (the local target's default
        ``$MLOPS_HOME/collected``), a folder, or ``wasb://<container>/<prefix>`` (templated).
    :param wasb_conn_id: Airflow ``wasb`` connection for a Blob Storage sink.
    :param output_path: the Parquet file to write; default
        ``$MLOPS_HOME/datasets/<service>/<run_id>.parquet`` (templated).
    :param model: only this model's records (templated).
    :param model_version: only this version's records (templated).
    :param emit_asset: emit the Asset event (turn off to collect inside the DAG the Asset triggers).
    """

    template_fields: Sequence[str] = (
        "window_start",
        "window_end",
        "sink",
        "output_path",
        "model",
        "model_version",
    )
    ui_color = "#fff3c4"

    def __init__(
        self,
        *,
        service_name: str,
        window_start: Any = "{{ data_interval_start }}",
        window_end: Any = "{{ data_interval_end }}",
        lookback: timedelta | float = timedelta(hours=1),
        sink: str | None = None,
        wasb_conn_id: str | None = None,
        output_path: str | None = None,
        model: str | None = None,
        model_version: str | None = None,
        emit_asset: bool = True,
        **kwargs: Any,
    ) -> None:
        if not service_name or "{{" in service_name:
            raise ValueError("service_name must be a literal name (it names the Asset at parse time)")
        if emit_asset:
            asset = collected_asset(service_name)
            outlets = list(kwargs.pop("outlets", None) or [])
            kwargs["outlets"] = outlets if asset in outlets else [*outlets, asset]
        super().__init__(**kwargs)
        self.service_name = service_name
        self.window_start = window_start
        self.window_end = window_end
        self.lookback = lookback
        self.sink = sink
        self.wasb_conn_id = wasb_conn_id
        self.output_path = output_path
        self.model = model
        self.model_version = model_version
        self.emit_asset = emit_asset

    def _default_path(self, context: Context) -> str:
        run_id = re.sub(r"[^A-Za-z0-9._-]", "_", str(context.get("run_id") or "manual"))
        return str(Path(mlops_home()) / "datasets" / self.service_name / f"{run_id}.parquet")

    def execute(self, context: Context) -> dict[str, Any]:
        window_start = self.window_start
        if window_start not in (None, "") and str(window_start) == str(self.window_end):
            # Manual and API runs get a zero-length data interval: read the lookback instead.
            window_start = None
        start, end = parse_window(window_start, self.window_end, self.lookback)
        result = collect_window(
            self.service_name,
            start,
            end,
            self.output_path or self._default_path(context),
            sink=self.sink or None,
            wasb_conn_id=self.wasb_conn_id,
            model=self.model or None,
            version=self.model_version or None,
        )
        self.log.info(
            "Collected %d rows (%d skipped, %d features) of %s from %d parts in %s, window %s .. %s",
            result["rows"],
            result["skipped"],
            result["features"],
            self.service_name,
            result["parts"],
            result["sink"],
            result["window_start"],
            result["window_end"],
        )
        if not result["rows"]:
            raise AirflowSkipException(
                f"no collected rows for {self.service_name} in {result['window_start']} .. "
                f"{result['window_end']} ({result['sink']}): nothing to write, no Asset event"
            )
        self.log.info("Wrote %s", result["path"])
        if self.emit_asset:
            extra = {k: result[k] for k in ("path", "rows", "window_start", "window_end", "service")}
            context["outlet_events"][collected_asset(self.service_name)].extra.update(extra)
        return result
