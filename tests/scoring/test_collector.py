"""The data collector against a real local folder: layout, content, sampling, bounds, outages."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from mlops_scoring.collector import Collector, ModelDataCollector, current_request_id, set_current
from mlops_scoring.sinks import AzureBlobSink, LocalFolderSink, SinkUnavailable, open_sink

# 2024-05-01 13:59:59.250 and 14:00:00.750 UTC: two hour folders.
TS_13 = datetime(2024, 5, 1, 13, 59, 59, 250000, tzinfo=UTC).timestamp()
TS_14 = datetime(2024, 5, 1, 14, 0, 0, 750000, tzinfo=UTC).timestamp()


def record(i: int, *, ts: float = TS_13, model: str = "digits", version: str = "3") -> dict[str, Any]:
    return {
        "request_id": f"req-{i}",
        "ts": ts,
        "model": model,
        "version": version,
        "inputs": {"input": [[float(i), 0.5]]},
        "outputs": {"label": [i % 10]},
        "latency_ms": 1.25,
    }


def read_parts(root: Path) -> dict[Path, list[dict[str, Any]]]:
    return {
        p.relative_to(root): [orjson.loads(line) for line in p.read_bytes().splitlines()]
        for p in sorted(root.rglob("*.jsonl"))
    }


def all_rows(root: Path) -> list[dict[str, Any]]:
    return [row for rows in read_parts(root).values() for row in rows]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def fast_retries(collector: Collector) -> Collector:
    collector.retry_base_seconds = 0.01
    collector.retry_max_seconds = 0.05
    return collector


class BlockingSink(LocalFolderSink):
    """A real folder sink whose writes wait until the test releases them."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, key: str, payload: bytes) -> None:
        self.entered.set()
        if not self.release.wait(30):
            raise SinkUnavailable(self.describe(), key, "test never released the sink")
        super().write(key, payload)


class LostAckSink(LocalFolderSink):
    """Stores every first attempt of a part, then reports failure: the ack got lost."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.attempts: dict[str, int] = {}

    def write(self, key: str, payload: bytes) -> None:
        super().write(key, payload)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if self.attempts[key] == 1:
            raise SinkUnavailable(self.describe(), key, "connection reset after upload")


@pytest.fixture(autouse=True)
def _no_current_collector():
    yield
    set_current(None)


def test_records_land_in_the_layout_with_their_content(tmp_path: Path) -> None:
    collector = Collector(service="fraud svc", sink=f"file://{tmp_path}", flush_seconds=60)
    collector.start()
    sent = [record(i, ts=TS_13 if i % 2 else TS_14) for i in range(6)]
    sent.append(record(6, model="other", version="1"))
    sent.append({**record(7), "inputs": np.arange(4, dtype=np.float32).reshape(2, 2), "extra": "kept"})
    for rec in sent:
        collector.collect(rec)
    collector.close()

    parts = read_parts(tmp_path)
    folders = sorted({str(p.parent) for p in parts})
    assert folders == [
        "fraud_svc/digits/3/2024/05/01/13",
        "fraud_svc/digits/3/2024/05/01/14",
        "fraud_svc/other/1/2024/05/01/13",
    ]
    for path in parts:
        stamp, pid, instance, seq = path.stem.split("-")
        assert len(stamp) == 13 and stamp.isdigit() and pid.isdigit() and seq.isdigit() and instance
    rows = {row["request_id"]: row for row in all_rows(tmp_path)}
    assert sorted(rows) == [f"req-{i}" for i in range(8)]
    assert rows["req-1"] == {
        "request_id": "req-1",
        "ts": "2024-05-01T13:59:59.250000Z",
        "service": "fraud_svc",
        "model": "digits",
        "version": "3",
        "inputs": {"input": [[1.0, 0.5]]},
        "outputs": {"label": [1]},
        "latency_ms": 1.25,
    }
    assert rows["req-2"]["ts"] == "2024-05-01T14:00:00.750000Z"
    assert list(rows["req-1"])[:5] == ["request_id", "ts", "service", "model", "version"]
    assert rows["req-7"]["inputs"] == [[0.0, 1.0], [2.0, 3.0]]
    assert rows["req-7"]["extra"] == "kept"
    assert not list(tmp_path.rglob("*.tmp")), "temporary files must be renamed away"
    assert collector.stats() == {"collected": 8, "written": 8, "dropped": 0, "buffered": 0, "sink_errors": 0}


def test_unsafe_names_cannot_escape_the_sink_folder(tmp_path: Path) -> None:
    root = tmp_path / "sink"
    collector = Collector(service="../svc", sink=str(root))
    collector.collect(record(0, model="../../etc", version="1/2"))
    collector.close()
    [path] = read_parts(root)
    assert path.parts[:3] == ("_._svc", "_._.._etc", "1_2")


def test_flushes_by_size_without_waiting_for_the_age_limit(tmp_path: Path) -> None:
    collector = Collector(service="svc", sink=tmp_path, flush_rows=50, flush_seconds=3600)
    collector.start()
    for i in range(120):
        collector.collect(record(i))
    wait_for(lambda: collector.stats()["written"] >= 100, "two full batches to be written")
    sizes = sorted(len(rows) for rows in read_parts(tmp_path).values())
    assert sizes[-2:] == [50, 50]
    collector.close()
    assert len(all_rows(tmp_path)) == 120


def test_flushes_by_age(tmp_path: Path) -> None:
    collector = Collector(service="svc", sink=tmp_path, flush_rows=1000, flush_seconds=0.05)
    collector.start()
    collector.collect(record(0))
    wait_for(lambda: collector.stats()["written"] == 1, "the lone record to be flushed by age")
    assert [r["request_id"] for r in all_rows(tmp_path)] == ["req-0"]
    collector.close()


def test_close_writes_everything_and_is_idempotent(tmp_path: Path) -> None:
    collector = Collector(service="svc", sink=tmp_path, flush_rows=1000, flush_seconds=3600)
    collector.start()
    for i in range(2500):
        collector.collect(record(i))
    collector.close()
    collector.close()
    rows = all_rows(tmp_path)
    assert sorted(r["request_id"] for r in rows) == sorted(f"req-{i}" for i in range(2500))
    assert collector.stats() == {
        "collected": 2500,
        "written": 2500,
        "dropped": 0,
        "buffered": 0,
        "sink_errors": 0,
    }
    collector.collect(record(9999))  # after close: refused and counted, not lost silently
    assert collector.stats()["dropped"] == 1
    assert len(all_rows(tmp_path)) == 2500


def test_close_without_start_still_flushes(tmp_path: Path) -> None:
    collector = Collector(service="svc", sink=tmp_path)
    for i in range(3):
        collector.collect(record(i))
    collector.close()
    assert len(all_rows(tmp_path)) == 3


def test_sampling_rate_is_respected() -> None:
    def count(rate: float, n: int = 4000, key: bool = False) -> int:
        c = Collector(service="s", sink="/nonexistent-never-written", sampling_rate=rate)
        return sum(c.should_sample(f"req-{i}" if key else None) for i in range(n))

    assert count(0.0) == 0
    assert count(1.0) == 4000
    # Binomial(4000, 0.25): mean 1000, sd 27.4; +-6 sd leaves no room for flakiness.
    assert 835 <= count(0.25) <= 1165
    assert 835 <= count(0.25, key=True) <= 1165
    keyed = Collector(service="s", sink="/nonexistent-never-written", sampling_rate=0.5)
    assert all(keyed.should_sample(f"k{i}") == keyed.should_sample(f"k{i}") for i in range(200))


def test_buffer_bound_drops_and_counts_while_the_sink_is_blocked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = BlockingSink(tmp_path)
    collector = Collector(service="svc", sink=sink, max_buffer=100, flush_rows=10, flush_seconds=0.01)
    collector.start()
    collector.collect(record(0))
    assert sink.entered.wait(10), "the flusher never started writing"

    with caplog.at_level(logging.WARNING, logger="mlops_scoring.collector"):
        for i in range(1, 501):
            collector.collect(record(i))  # returns although the sink is stuck
        assert not sink.release.is_set()
        assert collector.stats() == {
            "collected": 501,
            "written": 0,
            "dropped": 401,
            "buffered": 100,
            "sink_errors": 0,
        }
        sink.release.set()
        collector.close()

    assert collector.stats() == {
        "collected": 501,
        "written": 100,
        "dropped": 401,
        "buffered": 0,
        "sink_errors": 0,
    }
    assert sorted(r["request_id"] for r in all_rows(tmp_path)) == sorted(f"req-{i}" for i in range(100))
    assert any("dropped 401 records" in m for m in caplog.messages)


def test_unwritable_folder_keeps_the_backlog_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the sink wants a folder")
    root = blocker / "data"
    collector = fast_retries(
        Collector(service="svc", sink=root, max_buffer=40, flush_rows=5, flush_seconds=0.01)
    )
    with caplog.at_level(logging.WARNING, logger="mlops_scoring.collector"):
        collector.start()
        for i in range(100):
            collector.collect(record(i))
        wait_for(lambda: collector.stats()["sink_errors"] >= 20, "repeated failed writes")
        down = collector.stats()
        assert down["written"] == 0
        assert down["buffered"] == 40
        assert down["dropped"] == 60
        unavailable = [m for m in caplog.messages if "sink unavailable" in m]
        assert len(unavailable) == 1, "sink warnings must be rate-limited"

        blocker.unlink()
        blocker.mkdir()
        wait_for(lambda: collector.stats()["written"] == 40, "the backlog to be written after recovery")
        collector.collect(record(1000))
        collector.close()

    rows = all_rows(root)
    assert sorted(r["request_id"] for r in rows) == sorted([f"req-{i}" for i in range(40)] + ["req-1000"])
    final = collector.stats()
    assert final["written"] == 41 and final["dropped"] == 60 and final["buffered"] == 0
    assert final["collected"] == final["written"] + final["dropped"]


def test_close_counts_what_a_dead_sink_never_took(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    collector = fast_retries(Collector(service="svc", sink=blocker / "data", flush_seconds=0.01))
    collector.start()
    for i in range(25):
        collector.collect(record(i))
    collector.close(timeout=0.3)
    stats = collector.stats()
    assert stats["written"] == 0 and stats["buffered"] == 0 and stats["dropped"] == 25
    assert stats["sink_errors"] >= 1
    assert collector._thread is not None and not collector._thread.is_alive()


def test_a_retried_part_replaces_rather_than_duplicates(tmp_path: Path) -> None:
    sink = LostAckSink(tmp_path)
    collector = fast_retries(Collector(service="svc", sink=sink, flush_rows=10, flush_seconds=0.01))
    collector.start()
    for i in range(30):
        collector.collect(record(i))
    collector.close()
    assert all(n == 2 for n in sink.attempts.values())
    assert sorted(r["request_id"] for r in all_rows(tmp_path)) == sorted(f"req-{i}" for i in range(30))
    assert collector.stats()["sink_errors"] == len(sink.attempts)


def test_unserialisable_records_are_dropped_and_counted(tmp_path: Path) -> None:
    collector = Collector(service="svc", sink=tmp_path)
    collector.collect(record(0))
    collector.collect({**record(1), "outputs": object()})
    collector.collect({**record(2), "inputs": b"\x00\x01", "outputs": {1, 2}})
    collector.close()
    rows = {r["request_id"]: r for r in all_rows(tmp_path)}
    assert sorted(rows) == ["req-0", "req-2"]
    assert rows["req-2"]["inputs"] == "AAE="
    assert collector.stats()["dropped"] == 1


def test_model_data_collector_is_a_no_op_without_a_collector(tmp_path: Path) -> None:
    set_current(None)
    assert ModelDataCollector("digits").collect([1, 2, 3]) == ""


def test_model_data_collector_writes_entry_script_records(tmp_path: Path) -> None:
    import pandas as pd

    collector = Collector(service="svc", sink=tmp_path, model_versions={"digits": "7"})
    set_current(collector)
    inputs = ModelDataCollector("digits", designation="inputs", feature_names=["a", "b"])
    predictions = ModelDataCollector("sidecar", designation="predictions")

    given = inputs.collect(np.array([[1.0, 2.0]]), user_correlation_id="corr-1")
    token = current_request_id.set("req-42")
    try:
        from_request = predictions.collect(pd.DataFrame({"x": [1, 2], "y": [0.5, 1.5]}))
    finally:
        current_request_id.reset(token)
    generated = inputs.collect([3, 4])
    collector.close()

    assert given == "corr-1" and from_request == "req-42" and len(generated) == 32
    parts = read_parts(tmp_path)
    assert sorted({str(p.parent)[: -len("/yyyy/mm/dd/hh")] for p in parts}) == [
        "svc/digits/7",
        "svc/sidecar/custom",
    ]
    rows = {r["correlation_id"]: r for r in all_rows(tmp_path)}
    assert rows["corr-1"]["designation"] == "inputs"
    assert rows["corr-1"]["feature_names"] == ["a", "b"]
    assert rows["corr-1"]["data"] == [[1.0, 2.0]]
    assert rows["corr-1"]["request_id"] is None
    assert rows["req-42"] | {"ts": None} == {
        "request_id": "req-42",
        "ts": None,
        "service": "svc",
        "model": "sidecar",
        "version": "custom",
        "designation": "predictions",
        "feature_names": ["x", "y"],
        "data": [[1.0, 0.5], [2.0, 1.5]],
        "correlation_id": "req-42",
    }
    assert rows[generated]["data"] == [3, 4]


def test_model_data_collector_honours_sampling(tmp_path: Path) -> None:
    collector = Collector(service="svc", sink=tmp_path, sampling_rate=0.0)
    set_current(collector)
    assert ModelDataCollector("digits").collect([1], user_correlation_id="c") == "c"
    collector.close()
    assert collector.stats()["collected"] == 0


def test_sink_settings_are_parsed_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLOPS_COLLECT_AZURE_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLOPS_COLLECT_AZURE_ACCOUNT_URL", raising=False)
    assert isinstance(open_sink(f"file://{tmp_path}/a%20b"), LocalFolderSink)
    assert open_sink(f"file://{tmp_path}/a%20b").root == tmp_path / "a b"  # type: ignore[attr-defined]
    assert open_sink(str(tmp_path)).root == tmp_path  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="connection string"):
        open_sink("azureblob://container/prefix")
    with pytest.raises(ValueError, match="unknown collector sink scheme"):
        open_sink("s3://bucket/key")
    with pytest.raises(ValueError, match="local path"):
        open_sink("file://otherhost/data")
    with pytest.raises(ValueError, match="container"):
        AzureBlobSink("", connection_string="UseDevelopmentStorage=true")
    with pytest.raises(ValueError, match="sampling_rate"):
        Collector(service="s", sink=tmp_path, sampling_rate=1.5)
    with pytest.raises(ValueError, match="flush_seconds"):
        Collector(service="s", sink=tmp_path, flush_seconds=0)


def test_scored_records_splice_the_raw_body_and_outputs(tmp_path: Path) -> None:
    collector = Collector(service="svc", sink=tmp_path, flush_seconds=60)
    collector.start()
    body = b'{"data": [[1.5, 2]]}'
    pretty = b'{\n  "data": [\n    [3, 4]\n  ]\n}'  # a newline would split the JSON Lines record
    outputs = b'{"label":[7],"probabilities":[[0.25,0.75]]}'
    collector.collect_scored("req-a", TS_13, "digits", "3", body, outputs, 1.5)
    collector.collect_scored("req-b", TS_14, "digits", "3", pretty, outputs, 2.0)
    collector.collect_scored("req-c", TS_13, "digits", "3", b"plain text", b'{"ok":true}', 3.0, False)
    collector.collect_scored("req-d", TS_13, "digits", "3", b'{"x": 1}', b"[1]", 4.0, False)
    collector.close()

    parts = read_parts(tmp_path)
    folders = sorted(str(p.parent) for p in parts)
    assert folders == ["svc/digits/3/2024/05/01/13", "svc/digits/3/2024/05/01/14"]
    rows = {row["request_id"]: row for part in parts.values() for row in part}
    assert rows["req-a"] == {
        "request_id": "req-a",
        "ts": "2024-05-01T13:59:59.250000Z",
        "service": "svc",
        "model": "digits",
        "version": "3",
        "inputs": {"data": [[1.5, 2]]},
        "outputs": {"label": [7], "probabilities": [[0.25, 0.75]]},
        "latency_ms": 1.5,
    }
    assert rows["req-b"]["inputs"] == {"data": [[3, 4]]}
    assert rows["req-b"]["ts"] == "2024-05-01T14:00:00.750000Z"
    assert rows["req-c"]["inputs"] == "plain text" and rows["req-c"]["outputs"] == {"ok": True}
    assert rows["req-d"]["inputs"] == {"x": 1}
    for path in tmp_path.rglob("*.jsonl"):
        assert all(line.startswith(b'{"request_id":') for line in path.read_bytes().splitlines())
    assert collector.stats() == {"collected": 4, "written": 4, "dropped": 0, "buffered": 0, "sink_errors": 0}
