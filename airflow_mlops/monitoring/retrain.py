"""Retrain a model on collected data, log the run to MLflow, gate it, and register it.

The user's training code is a Python callable (or an importable ``"package.module:function"``)
taking a :class:`TrainingData` and returning a :class:`TrainingResult` (or a dict of its
fields), or a script run as a subprocess::

    python train.py --data <dir> --model-dir <dir> --result <file.json>

where ``<dir>`` holds ``baseline.npy`` (the parent's baseline sample), ``current.parquet``
(the collected dataset), ``feature_names.json``, ``parent/`` (the parent model's files) and
``context.json`` (model name, parent version, metric, holdout, params); the script writes the
new model's files into ``--model-dir`` and ``{"metrics": {...}, "parent_metrics": {...},
"params": {...}}`` to ``--result`` (and optionally ``train_features.npy`` into ``--data``).

The gate compares ``metrics[metric]`` with the parent's value of the same metric: the
``parent_metrics`` the training code measured on the *same* holdout (preferred), else the
parent version's ``mlops.metric.<metric>`` tag. A candidate that is not better by at least
``min_improvement`` is not registered; its MLflow run stays, tagged ``mlops.promoted=false``,
for the record.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_mlops.exceptions import ConfigError, ModelNotFound, MonitoringError
from airflow_mlops.monitoring.baseline import baseline_sample, profile_dataset
from airflow_mlops.monitoring.collected import dataset_metadata, read_dataset
from airflow_mlops.monitoring.drift import align_features

if TYPE_CHECKING:
    from airflow_mlops.hooks.registry import MlflowRegistryHook

__all__ = [
    "RETRAIN_EXPERIMENT",
    "TrainingData",
    "TrainingResult",
    "load_callable",
    "retrain_model",
]

log = logging.getLogger(__name__)

#: MLflow experiment holding the retraining runs.
RETRAIN_EXPERIMENT = "airflow-mlops-retrain"
_TAG_LIMIT = 5000


@dataclass
class TrainingData:
    """What a training function gets.

    :param model_name: the registered model being retrained.
    :param parent_version: the version being replaced.
    :param parent_dir: folder holding the parent model's files (to evaluate it, or warm-start).
    :param baseline_features: the parent's baseline sample (rows of its training data).
    :param current_features: the collected rows (columns in the baseline's order).
    :param feature_names: column names of both matrices.
    :param current_outputs: what the parent answered for each collected row (JSON text).
    :param output_dir: empty folder to write the new model's files into.
    :param metric: the metric the gate compares.
    :param holdout: share of the data to hold out for evaluating both models.
    :param params: free-form parameters from the operator.
    :param drift: the drift report that led here, if any.
    """

    model_name: str
    parent_version: str | None
    parent_dir: Path | None
    baseline_features: np.ndarray
    current_features: np.ndarray
    feature_names: list[str]
    current_outputs: list[str]
    output_dir: Path
    metric: str = "accuracy"
    holdout: float = 0.2
    params: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] | None = None


@dataclass
class TrainingResult:
    """What a training function returns.

    :param model_dir: folder (or file) of the new model; default ``TrainingData.output_dir``.
    :param metrics: the new model's metrics on the holdout.
    :param parent_metrics: the parent's metrics on the same holdout.
    :param params: training parameters to log.
    :param train_features: the rows the model was trained on (for its new baseline).
    """

    model_dir: str | Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    parent_metrics: dict[str, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    train_features: np.ndarray | None = None

    @classmethod
    def coerce(cls, value: Any) -> TrainingResult:
        """Accept a result, or a dict of its fields."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise MonitoringError(f"training result has unknown keys {sorted(unknown)}")
            return cls(**value)
        raise MonitoringError(
            f"training function returned {type(value).__name__}, not a TrainingResult or dict"
        )


def load_callable(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """Return a callable given as itself or as ``"package.module:function"`` (or dotted)."""
    if callable(ref):
        return ref
    text = str(ref).strip()
    module_name, sep, attr = text.partition(":")
    if not sep:
        module_name, _, attr = text.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"train_callable {text!r} is not 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import train_callable {text!r}: {e}") from e
    if not callable(target):
        raise ConfigError(f"train_callable {text!r} is not callable")
    return target


def _run_script(script: str, data: TrainingData, timeout: float | None) -> TrainingResult:
    """Run a training script in a subprocess with the data laid out in a folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = data.output_dir.parent / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "baseline.npy", data.baseline_features)
    columns = {n: data.current_features[:, j] for j, n in enumerate(data.feature_names)}
    pq.write_table(pa.table(columns), folder / "current.parquet")
    (folder / "feature_names.json").write_text(json.dumps(data.feature_names))
    context = {
        "model_name": data.model_name,
        "parent_version": data.parent_version,
        "parent_dir": str(data.parent_dir) if data.parent_dir else None,
        "metric": data.metric,
        "holdout": data.holdout,
        "params": data.params,
    }
    (folder / "context.json").write_text(json.dumps(context, default=str))
    if data.parent_dir is not None:
        os.symlink(data.parent_dir, folder / "parent")
    result_file = data.output_dir.parent / "result.json"
    argv = [sys.executable, script, "--data", str(folder), "--model-dir", str(data.output_dir)]
    argv += ["--result", str(result_file)]
    log.info("Running %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise MonitoringError(f"training script {script} did not finish in {timeout} s") from e
    for line in (proc.stdout + proc.stderr).splitlines()[-200:]:
        log.info("[train] %s", line)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        raise MonitoringError(f"training script {script} exited {proc.returncode}:\n{tail}")
    try:
        doc = json.loads(result_file.read_text())
    except (OSError, ValueError) as e:
        raise MonitoringError(f"training script {script} wrote no readable {result_file}: {e}") from e
    train_file = folder / "train_features.npy"
    return TrainingResult(
        model_dir=data.output_dir,
        metrics=doc.get("metrics") or {},
        parent_metrics=doc.get("parent_metrics"),
        params=doc.get("params") or {},
        train_features=np.load(train_file) if train_file.exists() else None,
    )


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _experiment(client: Any, artifact_root: str | None) -> str:
    experiment = client.get_experiment_by_name(RETRAIN_EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = (Path(artifact_root) / RETRAIN_EXPERIMENT).as_uri() if artifact_root else None
    try:
        return str(client.create_experiment(RETRAIN_EXPERIMENT, artifact_location=location))
    except Exception:  # another worker created it first
        experiment = client.get_experiment_by_name(RETRAIN_EXPERIMENT)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def retrain_model(
    registry: MlflowRegistryHook,
    model_name: str,
    *,
    dataset_path: str,
    parent_version: str | int | None = "latest",
    train_callable: str | Callable[..., Any] | None = None,
    train_script: str | None = None,
    metric: str = "accuracy",
    greater_is_better: bool = True,
    min_improvement: float | None = 0.0,
    holdout: float = 0.2,
    params: dict[str, Any] | None = None,
    drift: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    aliases: list[str] | None = None,
    script_timeout: float | None = None,
) -> dict[str, Any]:
    """Train a candidate on the parent's baseline sample and the collected data; register it if it wins.

    :return: ``{"name", "version", "uri", "metrics", "parent_metrics", "promoted", "reason",
        "run_id", "parent_version"}``; ``version`` and ``uri`` are ``None`` when not promoted.
    """
    if (train_callable is None) == (train_script is None):
        raise ConfigError("give exactly one of train_callable and train_script")
    if not 0.0 <= float(holdout) < 1.0:
        raise ConfigError(f"holdout must be within [0, 1), got {holdout}")
    parent: str | None = None
    if parent_version not in (None, ""):
        try:
            parent = registry.resolve_version(model_name, parent_version)
        except ModelNotFound:
            parent = None
    dataset = read_dataset(dataset_path)
    meta = dataset_metadata(dataset_path)
    baseline = registry.get_baseline(model_name, parent) if parent else None
    names = dataset.feature_names
    if baseline is not None:
        names = [f["name"] for f in baseline["features"]]
        current = align_features(dataset.features, dataset.feature_names, names)
        old = baseline_sample(baseline)
    else:
        current = dataset.features
        old = np.empty((0, current.shape[1]))

    with tempfile.TemporaryDirectory(prefix="mlops-retrain-") as tmp:
        parent_dir = None
        if parent:
            parent_dir = Path(tmp) / "parent"
            registry.download_model(model_name, parent, parent_dir)
        output_dir = Path(tmp) / "model"
        output_dir.mkdir()
        data = TrainingData(
            model_name=model_name,
            parent_version=parent,
            parent_dir=parent_dir,
            baseline_features=old,
            current_features=current,
            feature_names=list(names),
            current_outputs=dataset.outputs,
            output_dir=output_dir,
            metric=metric,
            holdout=float(holdout),
            params=dict(params or {}),
            drift=drift,
        )
        if train_script is not None:
            result = _run_script(train_script, data, script_timeout)
        else:
            result = TrainingResult.coerce(load_callable(train_callable)(data))  # type: ignore[arg-type]
        model_dir = Path(result.model_dir or output_dir)
        if not model_dir.exists() or (model_dir.is_dir() and not any(model_dir.iterdir())):
            raise MonitoringError(f"training wrote no model files into {model_dir}")

        new_value = _number(result.metrics.get(metric))
        if new_value is None and min_improvement is not None:
            raise MonitoringError(f"training reported no numeric {metric!r} (metrics: {result.metrics})")
        parent_metrics = dict(result.parent_metrics or {})
        parent_value = _number(parent_metrics.get(metric))
        if parent_value is None and parent:
            tag = registry.get_model_version(model_name, parent)["tags"].get(f"mlops.metric.{metric}")
            parent_value = _number(tag)
            if parent_value is not None:
                parent_metrics[metric] = parent_value

        if min_improvement is None:
            promoted, reason = True, "no gate"
        elif parent_value is None:
            promoted, reason = True, f"parent has no {metric} to compare with"
        else:
            assert new_value is not None
            gain = new_value - parent_value if greater_is_better else parent_value - new_value
            promoted = gain >= float(min_improvement)
            reason = (
                f"{metric} {new_value:.4g} vs parent {parent_value:.4g}: "
                f"{'improves' if gain >= 0 else 'worsens'} by {abs(gain):.4g} "
                f"({'>=' if promoted else '<'} required {float(min_improvement):.4g})"
            )
        log.info("Candidate %s: %s -> %s", model_name, reason, "promoted" if promoted else "not promoted")

        train_features = result.train_features
        if train_features is None:
            train_features = np.concatenate([old, current]) if len(old) else current
        window = {k: meta.get(f"mlops.{k}", "") for k in ("window_start", "window_end", "service")}

        client = registry.client
        run_params = {
            "parent_version": parent or "",
            "metric": metric,
            "min_improvement": "" if min_improvement is None else min_improvement,
            "holdout": holdout,
            "rows_baseline": len(old),
            "rows_current": len(current),
            **{f"train.{k}": v for k, v in {**(params or {}), **result.params}.items()},
        }

        def log_run() -> str:
            experiment_id = _experiment(client, registry.settings.artifact_root)
            run = client.create_run(experiment_id, run_name=f"retrain-{model_name}")
            run_id = run.info.run_id
            for key, value in run_params.items():
                client.log_param(run_id, key[:250], str(value)[:6000])
            for key, value in result.metrics.items():
                if _number(value) is not None:
                    client.log_metric(run_id, key, float(value))
            for key, value in parent_metrics.items():
                if _number(value) is not None:
                    client.log_metric(run_id, f"parent_{key}", float(value))
            run_tags = {
                "mlops.model": model_name,
                "mlops.promoted": str(promoted).lower(),
                "mlops.gate": reason,
            }
            run_tags.update({f"mlops.{k}": v for k, v in window.items() if v})
            run_tags["mlops.dataset"] = str(dataset_path)
            for key, value in run_tags.items():
                client.set_tag(run_id, key, str(value)[:_TAG_LIMIT])
            if model_dir.is_dir():
                client.log_artifacts(run_id, str(model_dir), "model")
            else:
                client.log_artifact(run_id, str(model_dir), "model")
            if drift:
                with tempfile.TemporaryDirectory() as side:
                    report = Path(side) / "drift.json"
                    report.write_text(json.dumps(drift, default=str))
                    client.log_artifact(run_id, str(report))
            client.set_terminated(run_id)
            return str(run_id)

        run_id = registry._call(f"logging the retraining run of {model_name}", log_run)
        out: dict[str, Any] = {
            "name": model_name,
            "version": None,
            "uri": None,
            "metrics": {k: _number(v) for k, v in result.metrics.items()},
            "parent_metrics": {k: _number(v) for k, v in parent_metrics.items()},
            "parent_version": parent,
            "promoted": promoted,
            "reason": reason,
            "run_id": run_id,
            "dataset_path": str(dataset_path),
        }
        if not promoted:
            return out

        version_tags = {
            "mlops.parent_version": parent or "",
            "mlops.training_run": run_id,
            "mlops.dataset": str(dataset_path),
            **{f"mlops.{k}": v for k, v in window.items() if v},
            **{f"mlops.metric.{k}": str(v) for k, v in result.metrics.items() if _number(v) is not None},
        }
        if drift:
            version_tags["mlops.drift.max_psi"] = str(drift.get("max_psi"))
            version_tags["mlops.drift.max_ks_statistic"] = str(drift.get("max_ks_statistic"))
            version_tags["mlops.drift.features"] = ",".join(drift.get("drifted_features") or [])[:_TAG_LIMIT]
            scores = {r["name"]: r.get("psi") for r in drift.get("table") or [] if r.get("drifted")}
            version_tags["mlops.drift.psi"] = json.dumps(scores, separators=(",", ":"))[:_TAG_LIMIT]
        version_tags.update(tags or {})
        registered = registry.register_model(
            model_name,
            f"runs:/{run_id}/model",
            description=f"retrained from version {parent} on {dataset_path}" if parent else None,
            tags=version_tags,
            aliases=aliases,
            baseline=profile_dataset(train_features, names),
        )
        out.update(version=registered["version"], uri=registered["uri"])
        return out
