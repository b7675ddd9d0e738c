"""Scoring-service fixtures: real ``mlops-serve`` processes on free ports, over real HTTP."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

PRIMARY = "primary-key-for-tests"
SECONDARY = "secondary-key-for-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``python -m mlops_scoring`` process."""

    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    def client(self, key: str | None = PRIMARY, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start_server(
    *args: str, env: dict[str, str] | None = None, port: int | None = None, timeout: float = 60.0
) -> Server:
    """Start the service with ``args`` (plus ``--port``, free by default) and wait for ``Listening on``."""
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "AZUREML_"))}
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlops_scoring", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    server = Server(proc=proc, url=f"http://127.0.0.1:{port}")

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        if line.strip() == f"Listening on http://127.0.0.1:{port}":
            return server
    proc.kill()
    proc.wait(10)
    raise AssertionError("the server did not start:\n" + "".join(server.lines))


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps({"primary_key": PRIMARY, "secondary_key": SECONDARY}))
    return path


@pytest.fixture(scope="session")
def onnx_server(digits_model_dir: Path, keys_file: Path) -> Iterator[Server]:
    """The digits model with keys, small batch delay (so concurrent requests batch)."""
    server = start_server(
        "--model-dir",
        str(digits_model_dir),
        "--keys-file",
        str(keys_file),
        "--service-name",
        "digits-svc",
        "--max-batch-delay-us",
        "2000",
        "--max-batch-size",
        "64",
        "--max-body-bytes",
        "200000",
    )
    yield server
    assert server.stop() == 0, "".join(server.lines)
