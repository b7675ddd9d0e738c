"""Test-session set-up shared by every test.

Airflow reads its configuration when first imported, so the environment is set here, at
import time, before any test module imports Airflow: one temporary ``AIRFLOW_HOME`` per
session with the repository's ``dags/`` as the dags folder and no example DAGs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="mlops-test-airflow-"))

os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["MLOPS_HOME"] = str(_HOME / "mlops")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip a test whose real dependency is missing here; in CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required when CI=true; run scripts/test-setup.sh", pytrace=False)
    pytest.skip(f"{what} not available (run scripts/test-setup.sh)")


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A running Docker engine (the test set-up starts ``dockerd``)."""
    require(_docker_answers(), "a Docker engine")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL server at 127.0.0.1:5432 (trust auth, database ``test``)."""
    import socket

    with socket.socket() as sock:
        sock.settimeout(2)
        up = sock.connect_ex(("127.0.0.1", 5432)) == 0
    require(up, "PostgreSQL at 127.0.0.1:5432")
    return "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The session's ``AIRFLOW_HOME``, with its metadata database migrated once."""
    from airflow.utils import db

    db.initdb()
    return _HOME


@pytest.fixture(scope="session")
def digits_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``model.onnx``: the example DAG's digits MLP (input ``float32[N, 64]``)."""
    from airflow_mlops.examples.digits import train_digits_onnx

    out = tmp_path_factory.mktemp("digits-model")
    train_digits_onnx(out)
    return out


@pytest.fixture(scope="session")
def digits_rows() -> list[list[float]]:
    """A few rows of the digits test split, as JSON-able nested lists."""
    from airflow_mlops.examples.digits import load_digits_split

    _, x_test, _, _ = load_digits_split()
    return x_test[:8].tolist()


AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    # Azurite's published development key; it opens nothing but a local emulator.
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


@pytest.fixture(scope="session")
def azurite_connection_string() -> str:
    """A connection string for Azurite on 127.0.0.1:10000 (started by ``scripts/azurite-up.sh``)."""
    import socket

    with socket.socket() as sock:
        sock.settimeout(2)
        up = sock.connect_ex(("127.0.0.1", 10000)) == 0
    require(up, "Azurite at 127.0.0.1:10000")
    return AZURITE_CONNECTION_STRING


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop any local service a failed test left running, then remove the session's home."""
    try:
        from airflow_mlops.targets.local import LocalTarget

        target = LocalTarget()
        for info in target.list():
            target.delete(info.name)
    except Exception as e:  # cleanup must not mask the test outcome
        print(f"conftest: could not stop leftover local services: {e}")
    shutil.rmtree(_HOME, ignore_errors=True)
