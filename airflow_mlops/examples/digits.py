"""Train a small classifier on scikit-learn's bundled digits data set and export it to ONNX.

The data ships inside scikit-learn, so nothing is downloaded. The model takes ``input``:
``float32[N, 64]`` (8x8 images, pixel values 0..16) and returns ``label`` (``int64[N]``) and
``probabilities`` (``float32[N, 10]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DigitsModel", "load_digits_split", "train_digits_onnx"]

INPUT_NAME = "input"
N_FEATURES = 64


@dataclass(frozen=True)
class DigitsModel:
    """Where the exported model lies and how well it did on the held-out split."""

    path: Path
    accuracy: float
    n_train: int


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``x_train, x_test, y_train, y_test`` (float32 features, a fixed 75/25 split)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y, test_size=0.25, random_state=seed, stratify=y
    )
    return x_train, x_test, y_train, y_test


def train_digits_onnx(
    out_dir: str | Path,
    *,
    hidden: int = 32,
    max_iter: int = 200,
    seed: int = 0,
    x_train: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
) -> DigitsModel:
    """Train an MLP on digits and write ``model.onnx`` into ``out_dir``.

    :param out_dir: folder to write ``model.onnx`` into (created if missing).
    :param hidden: width of the hidden layer.
    :param max_iter: training iterations; a very small value gives a deliberately poor model.
    :param seed: random seed for the split and the weights.
    :param x_train: training features to use instead of the bundled split (for retraining).
    :param y_train: labels matching ``x_train``.
    """
    import warnings

    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    bundled_x, x_test, bundled_y, y_test = load_digits_split(seed)
    if x_train is None or y_train is None:
        x_train, y_train = bundled_x, bundled_y
    clf = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    accuracy = float(clf.score(x_test, y_test))
    onx = to_onnx(
        clf,
        x_train[:1],
        options={id(clf.steps[-1][1]): {"zipmap": False}},
        initial_types=None,
        target_opset=17,
    )
    onx.graph.input[0].name = _rename_input(onx, INPUT_NAME)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    return DigitsModel(path=path, accuracy=accuracy, n_train=len(x_train))


def _rename_input(onx, new_name: str) -> str:  # type: ignore[no-untyped-def]
    """Rename the graph input everywhere it is consumed, so callers post ``{"input": ...}``."""
    old = onx.graph.input[0].name
    for node in onx.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new_name
    return new_name
