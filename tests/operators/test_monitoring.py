"""CollectDataOperator: Parquet dataset, XCom, and the Asset event's extra.

The context is a real ``OutletEventAccessors`` (what the task runner hands the operator)
plus a run id; the whole path through Airflow (a real ``mlops_collect`` run whose Asset
event triggers the retrain DAG) is in tests/dags/test_retrain_dag.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSkipException
from airflow.sdk.execution_time.context import OutletEventAccessors
from mlops_scoring.collector import Collector

from airflow_mlops.monitoring.collected import dataset_metadata, read_dataset
from airflow_mlops.operators.monitoring import CollectDataOperator, collected_asset

T0 = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)


def _collect(sink: Path, service: str, rows: list[list[float]]) -> None:
    collector = Collector(service=service, sink=str(sink), flush_seconds=0.1)
    collector.start()
    for i, row in enumerate(rows):
        collector.collect(
            {
                "request_id": f"r{i}",
                "ts": (T0 + timedelta(minutes=i)).timestamp(),
                "model": "digits",
                "version": "1",
                "inputs": {"input": [row]},
                "outputs": {"label": [i % 10]},
                "latency_ms": 0.5,
            }
        )
    collector.close(10)


def _context(run_id: str = "manual__2024-06-01T09:00:00+00:00") -> dict:
    return {"run_id": run_id, "outlet_events": OutletEventAccessors()}


def test_template_fields_and_asset() -> None:
    op = CollectDataOperator(task_id="c", service_name="svc-a")
    assert set(op.template_fields) >= {"window_start", "window_end", "sink", "output_path"}
    assert op.outlets == [collected_asset("svc-a")]
    assert collected_asset("svc-a").uri == "mlops://collected/svc-a"
    assert CollectDataOperator(task_id="c2", service_name="svc-a", emit_asset=False).outlets == []
    with pytest.raises(ValueError, match="literal"):
        CollectDataOperator(task_id="c3", service_name="{{ params.service }}")


def test_execute_writes_parquet_and_sets_the_asset_event_extra(
    tmp_path: Path, digits_rows: list[list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    _collect(tmp_path / "sink", "svc-b", digits_rows)
    op = CollectDataOperator(
        task_id="collect",
        service_name="svc-b",
        window_start=T0.isoformat(),
        window_end=(T0 + timedelta(hours=1)).isoformat(),
        sink=str(tmp_path / "sink"),
    )
    context = _context()
    result = op.execute(context)

    expected = tmp_path / "home" / "datasets" / "svc-b" / "manual__2024-06-01T09_00_00_00_00.parquet"
    assert result["path"] == str(expected) and result["rows"] == len(digits_rows)
    data = read_dataset(expected)
    assert data.features.tolist() == digits_rows and len(data.feature_names) == 64
    assert dataset_metadata(expected)["mlops.window_start"] == T0.isoformat()
    extra = context["outlet_events"][collected_asset("svc-b")].extra
    assert extra == {
        "path": str(expected),
        "rows": len(digits_rows),
        "window_start": T0.isoformat(),
        "window_end": (T0 + timedelta(hours=1)).isoformat(),
        "service": "svc-b",
    }


def test_empty_window_is_skipped_without_an_event(tmp_path: Path) -> None:
    op = CollectDataOperator(
        task_id="collect",
        service_name="svc-c",
        window_start=T0.isoformat(),
        window_end=(T0 + timedelta(hours=1)).isoformat(),
        sink=str(tmp_path),
        output_path=str(tmp_path / "out.parquet"),
    )
    context = _context()
    with pytest.raises(AirflowSkipException, match="no collected rows"):
        op.execute(context)
    assert not (tmp_path / "out.parquet").exists()
    assert context["outlet_events"][collected_asset("svc-c")].extra == {}


def test_window_defaults_to_lookback_before_now(tmp_path: Path) -> None:
    """A run without a data interval (manual or API) reads the lookback before now."""
    now = datetime.now(UTC)
    collector = Collector(service="svc-d", sink=str(tmp_path), flush_seconds=0.1)
    collector.start()
    for minutes in (5, 90):  # 5 minutes ago is in, 90 minutes ago is out
        collector.collect(
            {
                "request_id": str(minutes),
                "ts": (now - timedelta(minutes=minutes)).timestamp(),
                "model": "m",
                "version": "1",
                "inputs": {"data": [[1.0, 2.0]]},
                "outputs": [0],
            }
        )
    collector.close(10)
    op = CollectDataOperator(
        task_id="collect",
        service_name="svc-d",
        window_start=None,
        window_end=None,
        sink=str(tmp_path),
        output_path=str(tmp_path / "out.parquet"),
    )
    result = op.execute(_context())
    assert result["rows"] == 1 and read_dataset(result["path"]).request_id == ["5"]
