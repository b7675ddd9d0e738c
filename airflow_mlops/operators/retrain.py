"""Retrain a registered model on collected data and register the candidate if it wins."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_mlops.exceptions import ConfigError, MonitoringError
from airflow_mlops.hooks.registry import MlflowRegistryHook
from airflow_mlops.monitoring.retrain import retrain_model

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["RetrainOperator"]

ON_REJECTED = ("skip", "fail", "return")


class RetrainOperator(BaseOperator):
    """Train a candidate on the parent's baseline sample plus collected data; gate; register.

    The training code is a callable (or ``"package.module:function"``) that takes a
    :class:`~airflow_mlops.monitoring.retrain.TrainingData` and returns a
    :class:`~airflow_mlops.monitoring.retrain.TrainingResult`, or a script (see
    :mod:`airflow_mlops.monitoring.retrain` for its arguments). Every candidate is logged as an
    MLflow run (params, metrics, model files) through the registry connection. A candidate that
    passes the gate is registered as the next version with lineage tags (``mlops.parent_version``,
    ``mlops.window_start``/``end``, ``mlops.dataset``, ``mlops.training_run``, ``mlops.drift.*``,
    ``mlops.metric.*``) and a new baseline.

    XCom: ``{"name", "version", "uri", "metrics", "parent_metrics", "promoted", "reason",
    "run_id", "parent_version", "dataset_path"}``.

    A candidate that does not beat its parent by ``min_improvement`` on ``metric`` is not
    registered; then ``on_rejected`` decides: ``"skip"`` (default: push the result to XCom
    and skip, so the update path does not run), ``"fail"`` (raise), or ``"return"``
    (succeed with ``promoted: False``; branch on it downstream).

    :param model_name: registered model to retrain (templated).
    :param dataset_path: the collected dataset (Parquet from ``CollectDataOperator``) (templated).
    :param parent_version: version being replaced: number, ``"latest"`` or ``"@alias"`` (templated).
    :param train_callable: training callable or its import path (templated when a string).
    :param train_script: training script path (templated).
    :param metric: metric the gate compares.
    :param greater_is_better: direction of ``metric`` (``False`` for losses).
    :param min_improvement: least gain over the parent to promote; ``None`` turns the gate off
        (templated).
    :param holdout: share of data the training code should hold out to evaluate both models.
    :param train_params: extra parameters for the training code, logged to MLflow (templated).
    :param drift: the drift report that led here, e.g. ``DriftSensor``'s XCom (templated).
    :param tags: extra tags for the new version (templated).
    :param aliases: aliases to point at the new version (templated).
    :param on_rejected: ``"skip"``, ``"fail"`` or ``"return"``.
    :param mlflow_conn_id: MLflow connection; without one, the embedded registry is used.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "dataset_path",
        "parent_version",
        "train_callable",
        "train_script",
        "min_improvement",
        "train_params",
        "drift",
        "tags",
        "aliases",
    )
    template_fields_renderers = {"train_params": "json", "drift": "json", "tags": "json"}
    ui_color = "#e1bee7"

    def __init__(
        self,
        *,
        model_name: str,
        dataset_path: str,
        parent_version: str | int | None = "latest",
        train_callable: str | Callable[..., Any] | None = None,
        train_script: str | None = None,
        metric: str = "accuracy",
        greater_is_better: bool = True,
        min_improvement: float | str | None = 0.0,
        holdout: float = 0.2,
        train_params: dict[str, Any] | None = None,
        drift: dict[str, Any] | str | None = None,
        tags: dict[str, str] | None = None,
        aliases: list[str] | None = None,
        on_rejected: str = "skip",
        mlflow_conn_id: str = MlflowRegistryHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (train_callable is None) == (train_script is None):
            raise ConfigError("give exactly one of train_callable and train_script")
        if on_rejected not in ON_REJECTED:
            raise ConfigError(f"on_rejected must be one of {', '.join(ON_REJECTED)}, not {on_rejected!r}")
        if not 0.0 <= holdout < 1.0:
            raise ConfigError(f"holdout must be within [0, 1), got {holdout}")
        self.model_name = model_name
        self.dataset_path = dataset_path
        self.parent_version = parent_version
        self.train_callable = train_callable
        self.train_script = train_script
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.min_improvement = min_improvement
        self.holdout = holdout
        self.train_params = train_params
        self.drift = drift
        self.tags = tags
        self.aliases = aliases
        self.on_rejected = on_rejected
        self.mlflow_conn_id = mlflow_conn_id

    def _min_improvement(self) -> float | None:
        value = self.min_improvement
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return float(value)

    def execute(self, context: Context) -> dict[str, Any]:
        if not self.dataset_path:
            raise ConfigError("dataset_path is empty: nothing to train on")
        drift = self.drift
        if isinstance(drift, str):  # rendered as text unless the DAG renders native objects
            import ast
            import json

            try:
                drift = json.loads(drift) if drift.strip() else None
            except ValueError:
                drift = ast.literal_eval(drift)
        result = retrain_model(
            MlflowRegistryHook(mlflow_conn_id=self.mlflow_conn_id),
            self.model_name,
            dataset_path=self.dataset_path,
            parent_version=self.parent_version,
            train_callable=self.train_callable or None,
            train_script=self.train_script or None,
            metric=self.metric,
            greater_is_better=self.greater_is_better,
            min_improvement=self._min_improvement(),
            holdout=self.holdout,
            params=self.train_params,
            drift=drift if isinstance(drift, dict) else None,
            tags=self.tags,
            aliases=[self.aliases] if isinstance(self.aliases, str) else self.aliases,
        )
        self.log.info(
            "Candidate of %s (parent version %s), run %s: %s; metrics %s",
            self.model_name,
            result["parent_version"],
            result["run_id"],
            result["reason"],
            result["metrics"],
        )
        if result["promoted"]:
            self.log.info("Registered %s version %s", result["name"], result["version"])
            return result
        if self.on_rejected == "fail":
            raise MonitoringError(f"retrained {self.model_name} not promoted: {result['reason']}")
        if self.on_rejected == "skip":
            context["ti"].xcom_push(key="retrain", value=result)
            raise AirflowSkipException(f"retrained {self.model_name} not promoted: {result['reason']}")
        return result
