"""Registry back ends for the hook tests: the embedded SQLite default and an MLflow server on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CONN_ID = "mlflow_test"
MLFLOW = Path(sys.executable).with_name("mlflow")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer /health within {timeout:g} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def mlflow_server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An ``mlflow server`` on a fresh PostgreSQL database and a temporary artifact folder; its URL."""
    import psycopg2

    assert MLFLOW.exists(), f"{MLFLOW} is missing: the dev install provides it"
    database = f"mlops_registry_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')
    parts = urlsplit(postgres_url)
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the dev install ships psycopg2.
    backend = f"postgresql+psycopg2://{parts.netloc}/{database}"
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = tmp / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(MLFLOW),
                "server",
                "--backend-store-uri",
                backend,
                "--artifacts-destination",
                str(tmp / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``MLOPS_HOME`` for the SQLite-backed tests (a fresh MLflow database costs ~5 s to migrate)."""
    return tmp_path_factory.mktemp("mlops-home")


@pytest.fixture(params=["sqlite", "server"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, embedded_home: Path) -> str:
    """Point connection ``mlflow_test`` at one back end: absent (embedded SQLite) or the server."""
    if request.param == "sqlite":
        monkeypatch.setenv("MLOPS_HOME", str(embedded_home))
        monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", raising=False)
    else:
        url = request.getfixturevalue("mlflow_server")
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "mlflow", "host": url})
        )
    return request.param


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A model name no other test uses (back ends are shared across tests)."""
    return f"{request.node.originalname.removeprefix('test_')[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A small model folder: two files, one in a sub-folder."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\x08\x07fake-onnx-bytes")
    (folder / "sub" / "labels.json").write_text(json.dumps(list(range(10))))
    return folder
