"""RegisterModelOperator: template fields, argument checks, and a real registration (embedded SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_mlops.hooks.registry import MlflowRegistryHook
from airflow_mlops.operators.registry import RegisterModelOperator


def test_template_fields() -> None:
    assert set(RegisterModelOperator.template_fields) == {
        "name",
        "source",
        "description",
        "tags",
        "aliases",
        "baseline",
    }


def test_init_checks_the_connection_id() -> None:
    with pytest.raises(ValueError, match="mlflow_conn_id"):
        RegisterModelOperator(task_id="register", name="m", source="/x", mlflow_conn_id="")


def test_execute_renders_templates_and_returns_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Templated arguments are rendered with Jinja, the model is registered, the XCom is small."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    source = tmp_path / "run-42"
    source.mkdir()
    (source / "model.onnx").write_bytes(b"weights")
    op = RegisterModelOperator(
        task_id="register",
        name="digits-{{ params.flavour }}",
        source=str(tmp_path / "run-{{ params.run }}"),
        description="trained in {{ run_id }}",
        tags={"run_id": "{{ run_id }}"},
        aliases=["{{ params.alias }}"],
        baseline='{"rows": {{ params.rows }}}',
        params={"flavour": "mlp", "run": 42, "alias": "candidate", "rows": 1797},
    )
    context = {"params": op.params, "run_id": "manual__1"}
    op.render_template_fields(context)
    assert op.name == "digits-mlp" and op.source == str(source)

    xcom = op.execute(context)
    assert xcom == {"name": "digits-mlp", "version": "1", "uri": "models:/digits-mlp/1"}
    json.dumps(xcom)
    hook = MlflowRegistryHook()
    version = hook.get_model_version("digits-mlp", "1")
    assert version["description"] == "trained in manual__1" and version["tags"]["run_id"] == "manual__1"
    assert hook.resolve_version("digits-mlp", "@candidate") == "1"
    assert hook.get_baseline("digits-mlp", "1") == {"rows": 1797}
    assert op.execute(context)["version"] == "2"
