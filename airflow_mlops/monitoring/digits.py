"""Training functions for the digits example's retraining loop (``dags/mlops_retrain_on_drift.py``).

The example's drift is a per-pixel affine change (a scanner whose contrast and brightness
changed: ``x -> a*x + b``), a common real cause of drift that needs no new labels to fix:
the labelled training images are mapped onto the collected data's per-feature mean and
spread, and the model is trained on both the original and the mapped images. The holdout is
the bundled test split, original plus mapped, and the parent is scored on the same holdout.
Real retraining would join ground-truth labels to the collected requests instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from airflow_mlops.monitoring.retrain import TrainingData, TrainingResult

__all__ = ["retrain_digits", "train_poor_digits"]


def _accuracy(model_file: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    labels = session.run(None, {name: x.astype(np.float32)})[0]
    return float(np.mean(np.asarray(labels).reshape(-1) == y))


def _mapper(reference: np.ndarray, target: np.ndarray):  # type: ignore[no-untyped-def]
    """Return ``x -> x`` mapped per feature from the reference's mean/spread onto the target's."""
    mu_r, sd_r = reference.mean(axis=0), reference.std(axis=0)
    mu_t, sd_t = np.nanmean(target, axis=0), np.nanstd(target, axis=0)
    scale = np.where(sd_r > 1e-9, sd_t / np.where(sd_r > 1e-9, sd_r, 1.0), 1.0)
    return lambda x: ((x - mu_r) * scale + mu_t).astype(np.float32)


def retrain_digits(data: TrainingData) -> TrainingResult:
    """Retrain the digits MLP for the collected data's distribution; score it and the parent."""
    from airflow_mlops.examples.digits import load_digits_split, train_digits_onnx

    x_train, x_test, y_train, y_test = load_digits_split()
    to_current = _mapper(x_train, data.current_features)
    x_fit = np.concatenate([x_train, to_current(x_train)])
    y_fit = np.concatenate([y_train, y_train])
    hidden = int(data.params.get("hidden_units", 32))
    max_iter = int(data.params.get("max_iter", 200))
    model = train_digits_onnx(data.output_dir, hidden=hidden, max_iter=max_iter, x_train=x_fit, y_train=y_fit)
    x_hold = np.concatenate([x_test, to_current(x_test)])
    y_hold = np.concatenate([y_test, y_test])
    metrics = {"accuracy": _accuracy(model.path, x_hold, y_hold)}
    parent_metrics = None
    if data.parent_dir is not None and (data.parent_dir / "model.onnx").exists():
        parent_metrics = {"accuracy": _accuracy(data.parent_dir / "model.onnx", x_hold, y_hold)}
    return TrainingResult(
        metrics=metrics,
        parent_metrics=parent_metrics,
        params={"hidden_units": hidden, "max_iter": max_iter, "rows": len(x_fit)},
        train_features=x_fit,
    )


def train_poor_digits(data: TrainingData) -> TrainingResult:
    """Train on shuffled labels: a deliberately useless model (to exercise the gate and rollback)."""
    from airflow_mlops.examples.digits import load_digits_split, train_digits_onnx

    x_train, x_test, y_train, y_test = load_digits_split()
    shuffled = np.random.default_rng(0).permutation(y_train)
    model = train_digits_onnx(data.output_dir, hidden=4, max_iter=5, x_train=x_train, y_train=shuffled)
    metrics = {"accuracy": _accuracy(model.path, x_test, y_test)}
    parent_metrics = None
    if data.parent_dir is not None and (data.parent_dir / "model.onnx").exists():
        parent_metrics = {"accuracy": _accuracy(data.parent_dir / "model.onnx", x_test, y_test)}
    return TrainingResult(metrics=metrics, parent_metrics=parent_metrics, train_features=x_train)
