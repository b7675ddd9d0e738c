"""Wait until collected data drifts away from the model version's training baseline."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.bases.sensor import PokeReturnValue
from airflow.sdk.exceptions import AirflowSkipException

from airflow_mlops.exceptions import ConfigError, MonitoringError
from airflow_mlops.hooks.registry import MlflowRegistryHook
from airflow_mlops.monitoring.collected import (
    CollectedData,
    CollectedDataReader,
    parse_window,
    read_dataset,
    records_to_dataset,
)
from airflow_mlops.monitoring.drift import compute_drift

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["DriftSensor"]


class DriftSensor(BaseSensorOperator):
    """Succeed when the collected data has drifted from the model version's baseline.

    Each poke computes PSI and Kolmogorov-Smirnov per feature against the baseline stored
    with ``model_name``/``model_version`` (:meth:`MlflowRegistryHook.get_baseline`), logs the
    per-feature table and pushes the report to XCom (key ``drift_report`` on every poke; the
    return value when drift is found), so a retraining task can follow.

    Two sources:

    * ``dataset_path`` - a fixed dataset (``CollectDataOperator``'s Parquet). Its answer cannot
      change, so "no drift" (or fewer than ``min_rows`` rows) **skips** the task at once and
      the retraining path with it.
    * ``service_name`` - the live window: the last ``lookback`` of the service's collected
      records, read again on each poke. "No drift" (or too few rows) pokes again after
      ``poke_interval`` until ``timeout``; with ``soft_fail`` the timeout skips instead of failing.

    Defaults to ``mode="reschedule"``: between pokes the task frees its worker slot. It is not
    deferrable on purpose: the work of a poke is sorting up to millions of values per feature,
    CPU-bound NumPy that would stall a triggerer's event loop (and every other trigger on it).

    :param model_name: registered model whose baseline is compared with (templated).
    :param model_version: version, ``"latest"`` or ``"@alias"`` (templated).
    :param dataset_path: a collected dataset to judge (templated).
    :param service_name: a service whose live window to judge (templated).
    :param sink: where the service collects to (see ``CollectDataOperator``) (templated).
    :param wasb_conn_id: ``wasb`` connection of a Blob Storage sink.
    :param lookback: length of the live window.
    :param psi_threshold: PSI at or above which a feature drifts (``None``: ignore PSI) (templated).
    :param ks_pvalue: KS significance level, Bonferroni-corrected across features (``None``:
        ignore KS) (templated).
    :param min_drifted_features: drifted features needed to call it drift.
    :param min_rows: fewest rows worth judging (templated).
    :param mlflow_conn_id: MLflow connection; without one, the embedded registry is used.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "model_version",
        "dataset_path",
        "service_name",
        "sink",
        "psi_threshold",
        "ks_pvalue",
        "min_rows",
    )
    ui_color = "#ffe0b2"

    def __init__(
        self,
        *,
        model_name: str,
        model_version: str | int = "latest",
        dataset_path: str | None = None,
        service_name: str | None = None,
        sink: str | None = None,
        wasb_conn_id: str | None = None,
        lookback: timedelta | float = timedelta(hours=1),
        psi_threshold: float | str | None = 0.2,
        ks_pvalue: float | str | None = 0.01,
        min_drifted_features: int = 1,
        min_rows: int | str = 50,
        mlflow_conn_id: str = MlflowRegistryHook.default_conn_name,
        mode: str = "reschedule",
        poke_interval: float = 300,
        timeout: float = 6 * 3600,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, poke_interval=poke_interval, timeout=timeout, **kwargs)
        if not dataset_path and not service_name:
            raise ConfigError("give dataset_path (a collected dataset) or service_name (its live window)")
        if psi_threshold is None and ks_pvalue is None:
            raise ConfigError("at least one of psi_threshold and ks_pvalue must be set")
        self.model_name = model_name
        self.model_version = model_version
        self.dataset_path = dataset_path
        self.service_name = service_name
        self.sink = sink
        self.wasb_conn_id = wasb_conn_id
        self.lookback = lookback
        self.psi_threshold = psi_threshold
        self.ks_pvalue = ks_pvalue
        self.min_drifted_features = min_drifted_features
        self.min_rows = min_rows
        self.mlflow_conn_id = mlflow_conn_id

    def _load(self) -> tuple[CollectedData, dict[str, Any]]:
        if self.dataset_path:
            return read_dataset(self.dataset_path), {"dataset_path": self.dataset_path}
        start, end = parse_window(None, None, self.lookback)
        reader = CollectedDataReader(self.sink or None, wasb_conn_id=self.wasb_conn_id)
        records = reader.iter_records(self.service_name or "", start, end, model=self.model_name)
        source = {
            "service": self.service_name,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
        }
        return records_to_dataset(records), source

    def _not_yet(self, message: str) -> bool:
        """Skip when judging a fixed dataset; otherwise poke again."""
        if self.dataset_path:
            raise AirflowSkipException(message)
        self.log.info("%s; next check in %s s", message, self.poke_interval)
        return False

    @staticmethod
    def _number(value: Any) -> float | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return float(value)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        registry = MlflowRegistryHook(mlflow_conn_id=self.mlflow_conn_id)
        version = registry.resolve_version(self.model_name, self.model_version)
        baseline = registry.get_baseline(self.model_name, version)
        if baseline is None:
            raise MonitoringError(
                f"model {self.model_name} version {version} has no baseline to compare with: "
                "register it with baseline=profile_dataset(training_features)"
            )
        data, source = self._load()
        min_rows = int(self._number(self.min_rows) or 0)
        if data.rows < min_rows:
            return self._not_yet(f"{data.rows} rows collected, fewer than min_rows={min_rows}")
        result = compute_drift(
            baseline,
            data.features,
            feature_names=data.feature_names,
            psi_threshold=self._number(self.psi_threshold),
            ks_pvalue=self._number(self.ks_pvalue),
            min_drifted_features=self.min_drifted_features,
        )
        self.log.info(
            "Drift of %s against %s version %s:\n%s", source, self.model_name, version, result.to_table()
        )
        report = {**result.to_dict(), "model_name": self.model_name, "model_version": version, **source}
        context["ti"].xcom_push(key="drift_report", value=report)
        if result.drifted:
            return PokeReturnValue(is_done=True, xcom_value=report)
        return self._not_yet(f"no drift in {result.rows} rows ({len(result.features)} features)")
