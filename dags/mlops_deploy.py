"""Train, register, (package,) deploy and smoke-test the digits classifier.

    train -> register -> choose_path -> [build_image] -> deploy -> wait_healthy -> smoke_score

``target=local`` runs the scoring service as a local process (no Docker needed) and skips
``build_image``; ``target=docker`` builds a scoring image first and runs it as a container.
Deploying is ``create_or_update``: a second run updates the service in place, keeping its URL
and keys. Trigger it from the UI (every Param has a default) or with
``airflow dags test mlops_deploy``.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_mlops.operators.deploy import DeployServiceOperator
from airflow_mlops.operators.image import BuildImageOperator
from airflow_mlops.operators.registry import RegisterModelOperator
from airflow_mlops.sensors.health import WaitHealthySensor

MODEL_REF = (
    "{{ ti.xcom_pull(task_ids='register')['name'] }}:{{ ti.xcom_pull(task_ids='register')['version'] }}"
)

with DAG(
    dag_id="mlops_deploy",
    description="Train, register, package and deploy the digits model; score it once.",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["mlops", "example"],
    doc_md=__doc__,
    params={
        "model_name": Param("digits", type="string", minLength=1, description="Registered model name."),
        "service_name": Param(
            "digits-svc",
            type="string",
            pattern="^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$",
            description="Scoring service name (lowercase letters, digits and '-').",
        ),
        "target": Param(
            "local",
            enum=["local", "docker"],
            description="Where the service runs: a local process, or a Docker container (builds an image).",
        ),
        "port": Param(
            None,
            type=["null", "integer"],
            minimum=1024,
            maximum=65535,
            description="Port to publish the service on; empty picks a free one (kept on updates).",
        ),
        "hidden_units": Param(
            32, type="integer", minimum=4, maximum=512, description="MLP hidden layer width."
        ),
        "max_iter": Param(200, type="integer", minimum=5, description="Training iterations."),
        "auth": Param(True, type="boolean", description="Require a key (Authorization: Bearer <key>)."),
        "collect_data": Param(False, type="boolean", description="Record scored inputs and outputs."),
    },
) as dag:

    @task
    def train(run_folder: str, hidden_units: int, max_iter: int) -> dict[str, Any]:
        """Train the digits MLP into a folder of this run only; return its path and accuracy."""
        import re
        import tempfile
        from pathlib import Path

        from airflow_mlops.examples.digits import train_digits_onnx

        safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_folder)
        out = Path(tempfile.gettempdir()) / "mlops-train" / safe
        model = train_digits_onnx(out, hidden=int(hidden_units), max_iter=int(max_iter))
        print(f"Trained {model.path}: accuracy {model.accuracy:.4f} on the held-out split")
        return {"path": str(out), "accuracy": round(model.accuracy, 4)}

    trained = train(
        run_folder="mlops_deploy/{{ run_id }}",
        hidden_units="{{ params.hidden_units }}",
        max_iter="{{ params.max_iter }}",
    )

    register = RegisterModelOperator(
        task_id="register",
        name="{{ params.model_name }}",
        source="{{ ti.xcom_pull(task_ids='train')['path'] }}",
        description="digits MLP trained by {{ dag.dag_id }} run {{ run_id }}",
        tags={"accuracy": "{{ ti.xcom_pull(task_ids='train')['accuracy'] }}", "run_id": "{{ run_id }}"},
    )

    @task.branch
    def choose_path(target: str) -> list[str]:
        """Build an image for container targets; the local target runs the model directly."""
        # deploy is followed on both paths (on the docker path it still waits for build_image).
        return ["deploy"] if target == "local" else ["build_image", "deploy"]

    path = choose_path("{{ params.target }}")

    build_image = BuildImageOperator(task_id="build_image", models=[MODEL_REF])

    deploy = DeployServiceOperator(
        task_id="deploy",
        service_name="{{ params.service_name }}",
        models=[MODEL_REF],
        target="{{ params.target }}",
        config={
            "port": "{{ params.port }}",
            "auth_enabled": "{{ params.auth }}",
            "collect_model_data": "{{ params.collect_data }}",
        },
        image="{{ (ti.xcom_pull(task_ids='build_image') or {}).get('image') }}",
        manifest_hash="{{ (ti.xcom_pull(task_ids='build_image') or {}).get('manifest_hash') }}",
        mode="create_or_update",
        trigger_rule="none_failed_min_one_success",
    )

    wait_healthy = WaitHealthySensor(
        task_id="wait_healthy",
        service_name="{{ params.service_name }}",
        target="{{ params.target }}",
        timeout=600,
        poke_interval=2,
    )

    @task
    def smoke_score(service: dict[str, Any], target: str) -> dict[str, Any]:
        """Score two held-out digits through the live service, with its key (never logged)."""
        import httpx

        from airflow_mlops.examples.digits import load_digits_split
        from airflow_mlops.hooks.deployment import DeploymentHook

        _, x_test, _, y_test = load_digits_split()
        headers = {}
        if service.get("auth_enabled", True):
            key = DeploymentHook(target).get_keys(service["name"]).primary_key
            headers["Authorization"] = f"Bearer {key}"
        response = httpx.post(
            service["scoring_uri"], json={"data": x_test[:2].tolist()}, headers=headers, timeout=30
        )
        response.raise_for_status()
        labels = response.json()["label"]
        expected = y_test[:2].tolist()
        print(f"Service {service['name']} at {service['url']}: predicted {labels}, expected {expected}")
        return {"url": service["url"], "scoring_uri": service["scoring_uri"], "predictions": labels}

    smoke = smoke_score(deploy.output, "{{ params.target }}")

    trained >> register >> path >> [build_image, deploy]
    build_image >> deploy >> wait_healthy >> smoke
