"""BuildImageOperator: template fields, argument checks, and a real build's XCom."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from airflow_mlops.exceptions import ConfigError
from airflow_mlops.operators.image import BuildImageOperator


def test_template_fields_and_argument_checks() -> None:
    op = BuildImageOperator(task_id="b", models=["m:1"])
    assert {"models", "entry_script", "source_dir", "requirements", "conda_file", "inference_config",
            "base_image", "environment", "repository"} <= set(op.template_fields)  # fmt: skip
    assert op.repository == "airflow-mlops/scoring" and op.push is False and op.docker_conn_id is None
    with pytest.raises(ConfigError):
        BuildImageOperator(task_id="b2", models=[])


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_execute_builds_then_reuses(
    docker_engine: None, digits_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_mlops.hooks.registry import MlflowRegistryHook

    monkeypatch.setenv("MLOPS_BASE_IMAGE", os.environ.get("MLOPS_BASE_IMAGE", "airflow-mlops/base:bookworm"))
    name = f"digits-op-{uuid.uuid4().hex[:6]}"
    MlflowRegistryHook().register_model(name, str(digits_model_dir))
    op = BuildImageOperator(task_id="build", models=f"{name}:1", repository="airflow-mlops/test-op")
    first = op.execute({})
    try:
        assert set(first) == {"image", "tag", "manifest_hash", "reused", "models"}
        assert first["reused"] is False and first["image"] == f"airflow-mlops/test-op:{first['tag']}"
        assert first["models"][0]["name"] == name and first["models"][0]["digest"].startswith("sha256:")
        second = op.execute({})
        assert second["reused"] is True and second["image"] == first["image"]
    finally:
        subprocess.run(["docker", "rmi", "-f", first["image"]], capture_output=True)
