"""End to end: a real ``mlops-serve`` process collects what it scores and flushes it on SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(*args: str, timeout: float = 90.0) -> tuple[subprocess.Popen[str], str, list[str]]:
    """Start ``mlops-serve`` on a free port and wait for its ``Listening on`` line."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "AZUREML_"))}
    serve = Path(sys.executable).with_name("mlops-serve")
    proc = subprocess.Popen(
        [str(serve), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    seen: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            seen.put(line)
        seen.put(None)

    threading.Thread(target=pump, daemon=True).start()
    want = f"Listening on http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = seen.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            proc.kill()
            proc.wait(10)
            pytest.fail("mlops-serve never became ready:\n" + "".join(lines))
        if line.strip() == want:
            return proc, f"http://127.0.0.1:{port}", lines


def _records(root: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for p in sorted(root.rglob("*.jsonl")) for line in p.read_bytes().splitlines()]


def test_every_scored_request_is_on_disk_after_sigterm(
    tmp_path: Path, digits_model_dir: Path, digits_rows: list[list[float]]
) -> None:
    sink = tmp_path / "collected"
    proc, url, lines = _serve(
        "--model-dir",
        str(digits_model_dir),
        "--no-auth",
        "--service-name",
        "digits-e2e",
        "--collect-sink",
        str(sink),
    )
    n = 40
    responses: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(n):
                rows = [digits_rows[i % len(digits_rows)]]
                resp = client.post("/score", json={"data": rows}, headers={"x-request-id": f"e2e-{i}"})
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-request-id"] == f"e2e-{i}"
                responses[f"e2e-{i}"] = (rows, resp.json())
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, "".join(lines)

    records = _records(sink)
    assert sorted(r["request_id"] for r in records) == sorted(responses), "exactly one record per request"
    for rec in records:
        rows, body = responses[rec["request_id"]]
        assert rec["service"] == "digits-e2e"
        assert rec["inputs"] == {"data": rows}
        assert rec["outputs"] == body
        assert rec["latency_ms"] > 0
    folders = {p.parent.relative_to(sink).parts[:1] for p in sink.rglob("*.jsonl")}
    assert folders == {("digits-e2e",)}
    assert not list(sink.rglob("*.tmp"))


ENTRY_SCRIPT = """
import json

from mlops_scoring.collector import ModelDataCollector


def init():
    global inputs_dc
    inputs_dc = ModelDataCollector("digits", designation="inputs", feature_names=["pixels"])


def run(raw_data):
    rows = json.loads(raw_data)["data"]
    return {"rows": len(rows), "correlation_id": inputs_dc.collect(rows)}
"""


def test_entry_script_records_carry_the_request_id(
    tmp_path: Path, digits_model_dir: Path, digits_rows: list[list[float]]
) -> None:
    script = tmp_path / "score.py"
    script.write_text(ENTRY_SCRIPT)
    sink = tmp_path / "collected"
    proc, url, lines = _serve(
        "--model-dir",
        str(digits_model_dir),
        "--entry-script",
        str(script),
        "--no-auth",
        "--service-name",
        "script-e2e",
        "--collect-sink",
        str(sink),
    )
    n = 10
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(n):
                resp = client.post(
                    "/score", json={"data": digits_rows[:2]}, headers={"x-request-id": f"s-{i}"}
                )
                assert resp.status_code == 200, resp.text
                assert resp.json() == {"rows": 2, "correlation_id": f"s-{i}"}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, "".join(lines)

    records = _records(sink)
    logged = [r for r in records if "designation" in r]
    served = [r for r in records if "designation" not in r]
    assert sorted(r["request_id"] for r in served) == sorted(f"s-{i}" for i in range(n))
    assert sorted(r["correlation_id"] for r in logged) == sorted(f"s-{i}" for i in range(n))
    for rec in logged:
        assert rec["request_id"] == rec["correlation_id"]
        assert rec["model"] == "digits" and rec["designation"] == "inputs"
        assert rec["feature_names"] == ["pixels"] and rec["data"] == digits_rows[:2]
