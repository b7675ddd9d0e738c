"""Reading collected data: the scoring service's real collector writes, the reader reads back.

Both sinks are real: a local folder, and Azurite (Blob Storage) through the Azure provider's
``WasbHook`` with a ``wasb`` connection whose ``connection_string`` extra points at Azurite.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from mlops_scoring.collector import Collector

from airflow_mlops.exceptions import ConfigError
from airflow_mlops.monitoring.collected import (
    CollectedDataReader,
    collect_window,
    extract_rows,
    parse_window,
    read_dataset,
    records_to_dataset,
    window_prefixes,
)

T0 = datetime(2024, 5, 1, 11, 0, tzinfo=UTC)


def _write(sink: str, service: str, **kwargs) -> None:
    """Collect records at 10:30, 11:10, 11:59:59, 12:00 (model digits v1) and 11:20 (v2)."""
    collector = Collector(service=service, sink=sink, flush_seconds=0.1, **kwargs)
    collector.start()
    times = [T0 - timedelta(minutes=30), T0 + timedelta(minutes=10), T0 + timedelta(minutes=59, seconds=59)]
    times.append(T0 + timedelta(hours=1))
    for i, ts in enumerate(times):
        rows = [[float(i), float(i) + 0.5], [float(i) + 1, float(i) + 1.5]]
        collector.collect(
            {
                "request_id": f"r{i}",
                "ts": ts.timestamp(),
                "model": "digits",
                "version": "1",
                "inputs": {"data": rows},
                "outputs": {"label": [i, i + 1], "probabilities": [[0.1, 0.9], [0.8, 0.2]]},
                "latency_ms": 1.0,
            }
        )
    collector.collect(
        {
            "request_id": "v2",
            "ts": (T0 + timedelta(minutes=20)).timestamp(),
            "model": "digits",
            "version": "2",
            "inputs": {"input": [[9.0, 9.5]]},
            "outputs": [7],
            "latency_ms": 1.0,
        }
    )
    collector.close(10)
    assert collector.stats()["written"] == 5


def _check_window(reader: CollectedDataReader, service: str) -> None:
    start, end = T0, T0 + timedelta(hours=1)
    parts = reader.list_parts(service, start, end)
    assert parts and all("/2024/05/01/11/" in p for p in parts), parts  # only the 11:00 folder is read
    assert {p.split("/")[2] for p in parts} == {"1", "2"}

    data = records_to_dataset(reader.iter_records(service, start, end))
    assert sorted(data.request_id) == ["r1", "r1", "r2", "r2", "v2"]
    assert data.feature_names == ["f0", "f1"]
    assert sorted(data.features[:, 0].tolist()) == [1.0, 2.0, 2.0, 3.0, 9.0]
    first = data.request_id.index("r1")
    assert json.loads(data.outputs[first]) == {"label": 1, "probabilities": [0.1, 0.9]}
    assert json.loads(data.outputs[data.request_id.index("v2")]) == 7

    only_v1 = records_to_dataset(reader.iter_records(service, start, end, model="digits", version=1))
    assert set(only_v1.version) == {"1"} and only_v1.rows == 4


def test_local_folder_window(tmp_path: Path) -> None:
    _write(str(tmp_path), "svc")
    reader = CollectedDataReader(tmp_path)
    _check_window(reader, "svc")
    assert reader.list_parts("other-svc", T0, T0 + timedelta(hours=1)) == []


@pytest.mark.azurite
def test_azurite_window_through_wasb_hook(azurite_connection_string: str, monkeypatch) -> None:
    container = f"collect-{uuid.uuid4().hex[:8]}"
    _write(f"azureblob://{container}/prod/data", "svc", azure_connection_string=azurite_connection_string)
    conn = {"conn_type": "wasb", "extra": {"connection_string": azurite_connection_string}}
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_AZURITE", json.dumps(conn))
    reader = CollectedDataReader(f"wasb://{container}/prod/data", wasb_conn_id="mlops_azurite")
    try:
        _check_window(reader, "svc")
        assert reader.list_parts("svc", T0 + timedelta(days=3), T0 + timedelta(days=4)) == []
    finally:
        reader.hook.delete_container(container)


def test_collect_window_writes_a_parquet_dataset(tmp_path: Path) -> None:
    _write(str(tmp_path / "sink"), "svc")
    out = tmp_path / "ds" / "run.parquet"
    result = collect_window("svc", T0, T0 + timedelta(hours=1), out, sink=str(tmp_path / "sink"))
    assert result["rows"] == 5 and result["path"] == str(out) and result["parts"] == 2
    data = read_dataset(out)
    assert data.rows == 5 and data.feature_names == ["f0", "f1"]
    assert sorted(data.request_id) == ["r1", "r1", "r2", "r2", "v2"]
    assert all(t.startswith("2024-05-01T11:") for t in data.ts)

    empty = collect_window(
        "svc",
        T0 + timedelta(days=1),
        T0 + timedelta(days=2),
        tmp_path / "none.parquet",
        sink=str(tmp_path / "sink"),
    )
    assert empty["rows"] == 0 and empty["path"] is None and not (tmp_path / "none.parquet").exists()


@pytest.mark.parametrize(
    ("doc", "rows", "names"),
    [
        ({"data": [[1, 2], [3, 4]]}, [[1, 2], [3, 4]], None),
        ({"data": [1, 2]}, [[1, 2]], None),
        ({"input": [[1, 2]]}, [[1, 2]], None),
        ('{"data": [[1, 2]]}', [[1, 2]], None),
        ({"a": [1, 3], "b": [2, 4]}, [[1, 2], [3, 4]], ["a", "b"]),
        ({"inputs": [[1, 2]]}, [[1, 2]], None),
        ({"inputs": {"a": [1], "b": [2]}}, [[1, 2]], ["a", "b"]),
        ({"instances": [{"a": 1, "b": 2}]}, [[1, 2]], ["a", "b"]),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}, [[1, 2]], ["a", "b"]),
        ({"dataframe_records": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]}, [[1, 2], [3, 4]], ["a", "b"]),
        ([[1, 2], [3, 4]], [[1, 2], [3, 4]], None),
    ],
)
def test_input_shapes(doc: object, rows: list, names: list | None) -> None:
    got_rows, got_names = extract_rows(doc)
    assert np.asarray(got_rows, dtype=float).tolist() == np.asarray(rows, dtype=float).tolist()
    assert got_names == names


def test_entry_script_records_and_odd_shapes() -> None:
    records = [
        {
            "designation": "inputs",
            "data": [[1, 2]],
            "feature_names": ["x", "y"],
            "ts": "t",
            "request_id": "a",
        },
        {"designation": "predictions", "data": [0], "ts": "t"},
        {
            "designation": "inputs",
            "data": [[3, 4]],
            "feature_names": ["x", "y"],
            "ts": "t",
            "request_id": "b",
        },
        {"inputs": {"data": [[1, 2, 3]]}, "ts": "t"},  # the minority shape
        {"inputs": "not json", "ts": "t"},
    ]
    data = records_to_dataset(records)
    assert data.feature_names == ["x", "y"] and data.features.tolist() == [[1, 2], [3, 4]]
    assert data.skipped == 2


def test_windows_and_prefixes() -> None:
    start, end = parse_window("2024-05-01T22:30:00Z", "2024-05-03T01:00:00+00:00")
    assert window_prefixes(start, end) == [
        "2024/05/01/22/",
        "2024/05/01/23/",
        "2024/05/02/",
        "2024/05/03/00/",
    ]
    start, end = parse_window(None, "2024-05-01T12:00:00", lookback=1800)
    assert start == datetime(2024, 5, 1, 11, 30, tzinfo=UTC)
    with pytest.raises(ConfigError):
        parse_window("2024-05-01T12:00:00Z", "2024-05-01T11:00:00Z")
    with pytest.raises(ConfigError):
        CollectedDataReader("s3://bucket/x")
