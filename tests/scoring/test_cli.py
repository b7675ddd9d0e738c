"""``python -m mlops_scoring`` end to end: start-up line, SIGTERM drain, port handover, data collection."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.scoring.conftest import PRIMARY, free_port, start_server

SLOW_SCRIPT = """
import json
import time


def init():
    pass


def run(raw_data):
    time.sleep(json.loads(raw_data).get("sleep", 0))
    return {"ok": True}
"""


def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SCRIPT)
    server = start_server("--entry-script", str(script), "--model-dir", str(tmp_path), "--no-auth")
    result: dict[str, httpx.Response] = {}
    client = server.client(key=None)

    def slow() -> None:
        result["r"] = client.post("/score", json={"sleep": 1.0})

    t = threading.Thread(target=slow)
    t.start()
    with server.client(key=None) as probe:  # wait until the request is running in the entry script
        for _ in range(100):
            if "mlops_scoring_in_flight 1" in probe.get("/metrics").text:
                break
            time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    t.join(30)
    client.close()
    assert server.proc.wait(30) == 0, "".join(server.lines)
    assert "r" in result, "".join(server.lines)
    assert result["r"].status_code == 200
    assert result["r"].json() == {"ok": True}
    log = "".join(server.lines)
    assert "Drained and stopped" in log


def test_port_in_use_without_reuse_port_is_refused(digits_model_dir: Path) -> None:
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "mlops_scoring", "--model-dir", str(digits_model_dir), "--no-auth",
             "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2
    assert "in use" in proc.stderr and "--reuse-port" in proc.stderr


def test_reuse_port_handover_keeps_serving(
    digits_model_dir: Path, keys_file: Path, digits_rows: list
) -> None:
    """A second process takes the same port with --reuse-port; the first drains and exits 0."""
    port = free_port()
    args = ["--model-dir", str(digits_model_dir), "--keys-file", str(keys_file), "--reuse-port"]
    old = start_server(*args, port=port)
    new = start_server(*args, port=port)
    try:
        assert old.url == new.url
        old.proc.send_signal(signal.SIGTERM)
        with new.client(PRIMARY) as c:
            statuses = [c.post("/score", json={"data": digits_rows[:1]}).status_code for _ in range(20)]
        assert old.proc.wait(30) == 0
        assert statuses == [200] * 20
        with httpx.Client(base_url=new.url) as fresh:  # new connections reach the new process
            assert fresh.get("/health/ready").status_code == 200
    finally:
        old.stop()
        assert new.stop() == 0


def test_collects_inputs_and_outputs_and_flushes_on_sigterm(
    digits_model_dir: Path, keys_file: Path, digits_rows: list, tmp_path: Path
) -> None:
    sink = tmp_path / "collected"
    server = start_server(
        "--model-dir", str(digits_model_dir),
        "--keys-file", str(keys_file),
        "--service-name", "collect-svc",
        "--collect-sink", str(sink),
        "--collect-sampling", "1",
    )  # fmt: skip
    with server.client() as c:
        ids = []
        for i in range(3):
            r = c.post("/score", json={"data": digits_rows[i : i + 1]}, headers={"x-request-id": f"req-{i}"})
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
        metrics = c.get("/metrics").text
    assert 'mlops_scoring_collector_records_total{outcome="collected"} 3' in metrics
    assert server.stop() == 0, "".join(server.lines)
    parts = sorted(sink.rglob("*.jsonl"))
    assert parts, f"nothing written under {sink}"
    rel = parts[0].relative_to(sink).parts
    assert rel[0] == "collect-svc" and rel[1] == digits_model_dir.name and rel[2] == "local"
    records = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
    assert sorted(r["request_id"] for r in records) == ids
    first = next(r for r in records if r["request_id"] == "req-0")
    assert first["inputs"] == {"data": digits_rows[:1]}
    assert len(first["outputs"]["label"]) == 1 and len(first["outputs"]["probabilities"][0]) == 10
    assert first["latency_ms"] > 0 and first["ts"].endswith("Z")
