"""Close the monitoring loop: collect, detect drift, retrain, update in place, verify, roll back.

Two DAGs:

``mlops_collect`` (hourly) writes the last hour of the ``digits-svc`` service's collected
requests to a Parquet dataset and emits the Asset ``mlops://collected/digits-svc``
(an empty hour is skipped and emits nothing).

``mlops_retrain_on_drift`` runs on that Asset (or by hand, with Params)::

    inputs -> drift -> retrain -> choose_path -> [build_image] -> update -> wait_healthy
           -> smoke_test -> rollback (only if update, wait_healthy or smoke_test failed) -> outcome

* ``inputs`` takes the dataset from the triggering Asset event (a manual run collects the
  last ``lookback_hours`` itself) and the model version the service runs now.
* ``drift`` (DriftSensor) skips the rest when the data has not drifted.
* ``retrain`` (RetrainOperator) trains a candidate, logs it to MLflow, and registers it with
  lineage tags and a new baseline only if it beats the running version on the holdout
  (``min_improvement``; empty turns the gate off); otherwise the rest is skipped.
* ``build_image`` runs for ``target=docker`` only; ``update`` switches the service in place
  (same URL, same keys); ``smoke_test`` scores labelled digits through the live service.
* ``rollback`` puts the previous version back when the new one fails to start, stays
  unhealthy or fails the smoke test; ``outcome`` then fails the run, so it shows red.

Start a service with collection on first, e.g. ``mlops_deploy`` with ``collect_data=true``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_mlops.operators.deploy import UpdateServiceOperator
from airflow_mlops.operators.image import BuildImageOperator
from airflow_mlops.operators.monitoring import CollectDataOperator, collected_asset
from airflow_mlops.operators.retrain import RetrainOperator
from airflow_mlops.sensors.drift import DriftSensor
from airflow_mlops.sensors.health import WaitHealthySensor

SERVICE = "digits-svc"
COLLECTED = collected_asset(SERVICE)
START = pendulum.datetime(2024, 1, 1, tz="UTC")

with DAG(
    dag_id="mlops_collect",
    description=f"Hourly: write the last hour of {SERVICE}'s collected requests to Parquet.",
    schedule="@hourly",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "example", "monitoring"],
    doc_md=__doc__,
    params={
        "sink": Param(
            None,
            type=["null", "string"],
            description="Where the service collects to: empty for the local default, a folder, "
            "or wasb://<container>/<prefix>.",
        ),
        "wasb_conn_id": Param("wasb_default", type="string", description="Connection of a wasb:// sink."),
    },
) as collect_dag:
    CollectDataOperator(
        task_id="collect",
        service_name=SERVICE,
        sink="{{ params.sink or '' }}",
        wasb_conn_id="{{ params.wasb_conn_id }}",
        lookback=timedelta(hours=1),
    )


MODEL_REF = "{{ ti.xcom_pull(task_ids='retrain')['name'] }}:{{ ti.xcom_pull(task_ids='retrain')['version'] }}"
PREVIOUS_REF = "{{ params.model_name }}:{{ ti.xcom_pull(task_ids='inputs')['model_version'] }}"

with DAG(
    dag_id="mlops_retrain_on_drift",
    description="On new collected data: drift check, retrain, update in place, verify, roll back if bad.",
    schedule=[COLLECTED],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["mlops", "example", "monitoring"],
    doc_md=__doc__,
    params={
        "service_name": Param(
            SERVICE,
            type="string",
            pattern="^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$",
            description="The running service to watch and update.",
        ),
        "model_name": Param("digits", type="string", minLength=1, description="Registered model it serves."),
        "target": Param("local", enum=["local", "docker"], description="Where the service runs."),
        "dataset_path": Param(
            None,
            type=["null", "string"],
            description="A collected dataset (Parquet) to use; empty: the triggering Asset event's, "
            "or collect the last lookback_hours now.",
        ),
        "lookback_hours": Param(1, type="number", exclusiveMinimum=0, description="Window of a manual run."),
        "sink": Param(None, type=["null", "string"], description="Collection sink (empty: local default)."),
        "psi_threshold": Param(0.2, type="number", minimum=0, description="PSI at which a feature drifts."),
        "ks_pvalue": Param(0.01, type="number", minimum=0, maximum=1, description="KS significance level."),
        "min_rows": Param(50, type="integer", minimum=1, description="Fewest collected rows worth judging."),
        "trainer": Param(
            "airflow_mlops.monitoring.digits:retrain_digits",
            type="string",
            description="Training function, 'package.module:function'.",
        ),
        "min_improvement": Param(
            0.0,
            type=["null", "number"],
            description="Least holdout accuracy gain over the running version; empty turns the gate off.",
        ),
        "smoke_min_accuracy": Param(
            0.8, type="number", minimum=0, maximum=1, description="Accuracy the smoke test requires."
        ),
    },
) as dag:

    @task
    def inputs(params: dict[str, Any], run_id: str, triggering_asset_events: Any = None) -> dict[str, Any]:
        """Find the dataset to judge and the version the service runs now (the rollback point)."""
        import re
        from pathlib import Path

        from airflow_mlops.constants import mlops_home
        from airflow_mlops.hooks.deployment import DeploymentHook
        from airflow_mlops.monitoring.collected import collect_window, parse_window

        service = DeploymentHook(params["target"]).get_service(params["service_name"])
        running = [m for m in service.models if m["name"] == params["model_name"]]
        if not running:
            raise AirflowFailException(
                f"{service.name} does not serve {params['model_name']}: {service.models}"
            )
        out = {"model_version": str(running[0]["version"]), "image": service.image, "url": service.url}

        events = [e for evs in (triggering_asset_events or {}).values() for e in evs]
        if events and (events[-1].extra or {}).get("path"):
            extra = events[-1].extra
            print(f"Dataset from the Asset event: {extra['path']} ({extra.get('rows')} rows)")
            return {**out, "dataset_path": extra["path"], "rows": extra.get("rows")}
        if params.get("dataset_path"):
            return {**out, "dataset_path": params["dataset_path"], "rows": None}
        start, end = parse_window(None, None, timedelta(hours=float(params["lookback_hours"])))
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
        path = Path(mlops_home()) / "datasets" / params["service_name"] / f"{safe}.parquet"
        collected = collect_window(params["service_name"], start, end, path, sink=params.get("sink") or None)
        if not collected["rows"]:
            raise AirflowSkipException(f"no collected rows for {params['service_name']} since {start}")
        print(f"Collected {collected['rows']} rows into {collected['path']}")
        return {**out, "dataset_path": collected["path"], "rows": collected["rows"]}

    found = inputs()

    drift = DriftSensor(
        task_id="drift",
        dataset_path="{{ ti.xcom_pull(task_ids='inputs')['dataset_path'] }}",
        model_name="{{ params.model_name }}",
        model_version="{{ ti.xcom_pull(task_ids='inputs')['model_version'] }}",
        psi_threshold="{{ params.psi_threshold }}",
        ks_pvalue="{{ params.ks_pvalue }}",
        min_rows="{{ params.min_rows }}",
        poke_interval=60,
        timeout=600,
    )

    retrain = RetrainOperator(
        task_id="retrain",
        model_name="{{ params.model_name }}",
        dataset_path="{{ ti.xcom_pull(task_ids='inputs')['dataset_path'] }}",
        parent_version="{{ ti.xcom_pull(task_ids='inputs')['model_version'] }}",
        train_callable="{{ params.trainer }}",
        min_improvement="{{ params.min_improvement }}",
        drift="{{ ti.xcom_pull(task_ids='drift') }}",
        tags={"mlops.retrained_by": "{{ dag.dag_id }}/{{ run_id }}"},
    )

    @task.branch
    def choose_path(target: str) -> list[str]:
        """Build an image for container targets; the local target runs the model directly."""
        return ["update"] if target == "local" else ["build_image", "update"]

    path = choose_path("{{ params.target }}")

    build_image = BuildImageOperator(task_id="build_image", models=[MODEL_REF])

    update = UpdateServiceOperator(
        task_id="update",
        service_name="{{ params.service_name }}",
        models=[MODEL_REF],
        target="{{ params.target }}",
        image="{{ (ti.xcom_pull(task_ids='build_image') or {}).get('image') }}",
        manifest_hash="{{ (ti.xcom_pull(task_ids='build_image') or {}).get('manifest_hash') }}",
        trigger_rule="none_failed_min_one_success",
    )

    wait_healthy = WaitHealthySensor(
        task_id="wait_healthy",
        service_name="{{ params.service_name }}",
        target="{{ params.target }}",
        timeout=300,
        poke_interval=2,
    )

    @task
    def smoke_test(service: dict[str, Any], target: str, min_accuracy: float) -> dict[str, Any]:
        """Score labelled digits through the live service with its key (never logged)."""
        import httpx

        from airflow_mlops.examples.digits import load_digits_split
        from airflow_mlops.hooks.deployment import DeploymentHook

        _, x_test, _, y_test = load_digits_split()
        headers = {}
        if service.get("auth_enabled", True):
            key = DeploymentHook(target).get_keys(service["name"]).primary_key
            headers["Authorization"] = f"Bearer {key}"
        response = httpx.post(
            service["scoring_uri"], json={"data": x_test[:100].tolist()}, headers=headers, timeout=30
        )
        response.raise_for_status()
        labels = response.json()["label"]
        accuracy = sum(int(a == b) for a, b in zip(labels, y_test[:100].tolist(), strict=True)) / 100
        print(f"Service {service['name']} at {service['url']}: accuracy {accuracy:.2f} on 100 digits")
        if accuracy < float(min_accuracy):
            raise AirflowFailException(f"smoke test: accuracy {accuracy:.2f} < required {min_accuracy}")
        return {"url": service["url"], "accuracy": accuracy}

    smoke = smoke_test(update.output, "{{ params.target }}", "{{ params.smoke_min_accuracy }}")

    rollback = UpdateServiceOperator(
        task_id="rollback",
        service_name="{{ params.service_name }}",
        models=[PREVIOUS_REF],
        target="{{ params.target }}",
        image="{{ ti.xcom_pull(task_ids='inputs')['image'] }}",
        trigger_rule="one_failed",
    )

    @task(trigger_rule="all_done")
    def outcome(ti: Any = None) -> dict[str, Any]:
        """Fail the run when the new version was rolled back or could not be verified."""
        retrained = ti.xcom_pull(task_ids="retrain")
        rolled_back = ti.xcom_pull(task_ids="rollback")
        previous = ti.xcom_pull(task_ids="inputs") or {}
        if rolled_back:
            raise AirflowFailException(
                f"new version {retrained and retrained.get('version')} failed; rolled back to "
                f"version {previous.get('model_version')}"
            )
        if retrained and retrained.get("promoted") and not ti.xcom_pull(task_ids="smoke_test"):
            raise AirflowFailException("the new version was not verified, and the rollback did not run")
        return {"version": retrained and retrained.get("version"), "rolled_back": False}

    found >> drift >> retrain >> path >> [build_image, update]
    build_image >> update >> wait_healthy >> smoke
    [update, wait_healthy, smoke] >> rollback >> outcome()
