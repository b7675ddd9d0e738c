"""Bounded load: past the in-flight and queue limits the service answers 503 with Retry-After."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.scoring.conftest import Server, start_server

SLOW_SCRIPT = """
import json
import time


def init():
    pass


def run(raw_data):
    time.sleep(json.loads(raw_data).get("sleep", 0))
    return {"ok": True}
"""


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("slow")
    script = root / "slow.py"
    script.write_text(SLOW_SCRIPT)
    server = start_server(
        "--entry-script", str(script),
        "--model-dir", str(root),
        "--no-auth",
        "--max-concurrent-requests", "1",
        "--max-queue", "2",
        "--max-wait-ms", "1500",
        "--scoring-timeout-ms", "1000",
    )  # fmt: skip
    yield server
    assert server.stop() == 0, "".join(server.lines)


def _wait_idle(server: Server) -> None:
    with server.client(key=None) as c:
        for _ in range(100):
            text = c.get("/metrics").text
            if "mlops_scoring_in_flight 0" in text and "mlops_scoring_queue_depth 0" in text:
                return
            time.sleep(0.1)


def test_overload_gives_only_200_and_503(slow_server: Server) -> None:
    _wait_idle(slow_server)
    with slow_server.client(key=None) as c:

        def call(_: int) -> httpx.Response:
            return c.post("/score", json={"sleep": 0.3})

        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(call, range(12)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 503}, statuses
        assert statuses.count(200) >= 1
        for r in responses:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "overloaded"
        assert c.get("/health/ready").status_code == 200
        assert c.post("/score", json={"sleep": 0}).status_code == 200
        metrics = c.get("/metrics").text
    assert 'mlops_scoring_rejections_total{reason="overloaded"}' in metrics


def test_timeout_while_running_is_504_and_waiting_too_long_is_503(slow_server: Server) -> None:
    _wait_idle(slow_server)
    results: dict[str, httpx.Response] = {}
    with slow_server.client(key=None) as c:

        def call(name: str, sleep: float) -> None:
            results[name] = c.post("/score", json={"sleep": sleep})

        long = threading.Thread(target=call, args=("long", 2.5))
        long.start()
        time.sleep(0.2)
        call("queued", 0)  # waits for the slot, then for the busy model thread past its deadline
        long.join()
        assert results["long"].status_code == 504
        assert results["long"].json()["error"]["code"] == "timeout"
        assert results["queued"].status_code == 503
        assert results["queued"].json()["error"]["code"] == "queue_timeout"
        assert "retry-after" in results["queued"].headers
        _wait_idle(slow_server)
        assert c.get("/health/ready").status_code == 200


def test_settings_fail_loudly(tmp_path: Path) -> None:
    from mlops_scoring.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="max-queue"):
        Settings(model_dir=tmp_path, no_auth=True, max_queue=-1)
    with pytest.raises(SettingsError, match="MLOPS_PORT"):
        Settings.from_args([], env={"MLOPS_MODEL_DIR": str(tmp_path), "MLOPS_AUTH": "off", "MLOPS_PORT": "x"})
    with pytest.raises(SettingsError, match="collect-sampling"):
        Settings.from_args(
            ["--no-auth", "--collect-sampling", "1.5"], env={"AZUREML_MODEL_DIR": str(tmp_path)}
        )
    with pytest.raises(SettingsError, match="keys-file"):
        Settings.from_args(["--model-dir", str(tmp_path), "--keys-file", str(tmp_path / "none.json")], env={})
    s = Settings.from_args(
        ["--max-batch-size", "8"], env={"MLOPS_MODEL_DIR": str(tmp_path), "MLOPS_AUTH": "off"}
    )
    assert s.no_auth and s.max_batch_size == 8 and s.model_dir == tmp_path
