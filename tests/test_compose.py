"""``docker-compose.yaml`` is a valid Compose file with the stack the README promises."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

REPO = Path(__file__).resolve().parent.parent


def _compose() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_validates_and_wires_the_stack() -> None:
    compose = _compose()
    require(compose is not None, "docker compose (scripts/docker-up.sh installs it)")
    assert compose is not None
    subprocess.run([*compose, "-f", str(REPO / "docker-compose.yaml"), "config", "-q"], check=True, cwd=REPO)
    rendered = subprocess.run(
        [*compose, "-f", str(REPO / "docker-compose.yaml"), "config"],
        check=True, cwd=REPO, capture_output=True, text=True,
    ).stdout  # fmt: skip
    import yaml

    services = yaml.safe_load(rendered)["services"]
    airflow = {"api-server", "scheduler", "dag-processor", "triggerer"}
    assert airflow | {"postgres", "mlflow", "azurite", "airflow-init"} <= set(services)
    for name in airflow:
        env = services[name]["environment"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"])["host"] == "http://mlflow:5000"
        assert services[name]["build"]["dockerfile"].endswith("docker/Dockerfile")
    assert "postgres" in " ".join(services["mlflow"]["command"])
    assert any("docker.sock" in str(v) for v in services["scheduler"]["volumes"])


@pytest.mark.parametrize("path", ["docker/Dockerfile", "docker/Dockerfile.dockerignore"])
def test_airflow_image_files_exist(path: str) -> None:
    assert (REPO / path).is_file()
