"""The two models the benchmark serves, and the request bodies it posts.

* ``digits``: the example DAG's MLP (64 → 32 → 10, scikit-learn → ONNX). A request costs the
  model a few microseconds, so throughput is set by the HTTP stack: the server's own cost.
* ``wide``: an MLP built here with the ``onnx`` helper, 64 → 2048 → 2048 → 10 with random
  weights and a free batch dimension, about 4.4 M multiply-adds per row: the model dominates,
  and what counts is how close the server gets to onnxruntime called in process.

Both take ``input: float32[N, 64]`` and return ``label: int64[N]`` and
``probabilities: float32[N, 10]``. Each is written three ways: the bare ``model.onnx``
(ours, Azure ML's score.py, in-process), and an MLflow model folder saved with
``mlflow.onnx.save_model`` and a signature, so MLflow parses the JSON to float32 as we do.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BenchModel", "build_wide_mlp", "payload", "payload_path", "prepare_models", "sample_rows"]

N_FEATURES = 64


@dataclass(frozen=True)
class BenchModel:
    """Where one benchmark model lies, in each form a peer needs."""

    name: str
    onnx_dir: Path  # holds only model.onnx
    mlflow_dir: Path  # an MLflow model folder (MLmodel + model.onnx)
    description: str

    @property
    def onnx_path(self) -> Path:
        """Return the path of the bare ONNX file."""
        return self.onnx_dir / "model.onnx"


def build_wide_mlp(path: Path, *, width: int = 2048, seed: int = 0) -> None:
    """Write a compute-bound MLP (64 → width → width → 10, ReLU, softmax) to ``path``.

    :param path: the ``.onnx`` file to write
    :param width: the hidden width; 2048 gives about 4.4 M multiply-adds per row
    :param seed: seed of the random weights (He initialisation, so activations stay finite)
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [N_FEATURES, width, width, 10]
    nodes = []
    inits = []
    prev = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"h{i}" if i < len(sizes) - 2 else "logits"
        nodes.append(
            helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"{out}_lin" if out != "logits" else out])
        )
        if out != "logits":
            nodes.append(helper.make_node("Relu", [f"{out}_lin"], [out]))
        prev = out
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    nodes.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", N_FEATURES])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="airflow-mlops-bench"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def _save_mlflow(onnx_path: Path, dst: Path) -> None:
    import shutil

    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    if dst.exists():
        shutil.rmtree(dst)
    import onnxruntime as ort

    x = sample_rows(4)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x}), strict=True))
    signature = infer_signature({"input": x}, outs)
    mlflow.onnx.save_model(onnx.load(str(onnx_path)), str(dst), signature=signature)


def sample_rows(n: int) -> np.ndarray:
    """Return ``n`` real digits rows (float32, values 0..16), cycling the data set."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    return x[np.arange(n) % len(x)]


def payload(rows: int, fmt: str = "score") -> dict[str, list[list[float]]]:
    """Return a request body: Azure ML's ``{"data": [[64 floats], ...]}`` or MLflow's ``{"inputs": ...}``.

    :param rows: how many rows
    :param fmt: ``score`` (ours and Azure ML) or ``invocations`` (MLflow's scoring protocol)
    """
    return {"data" if fmt == "score" else "inputs": sample_rows(rows).tolist()}


def prepare_models(root: Path, *, log=print) -> dict[str, BenchModel]:
    """Train/build both models under ``root`` (skipped when already there) and return them.

    :param root: ``.bench/models``
    :param log: where progress lines go
    """
    from airflow_mlops.examples.digits import train_digits_onnx

    models = {
        "digits": BenchModel(
            "digits",
            root / "digits" / "onnx",
            root / "digits" / "mlflow",
            "the example DAG's digits MLP (64→32→10): small, HTTP-bound",
        ),
        "wide": BenchModel(
            "wide",
            root / "wide" / "onnx",
            root / "wide" / "mlflow",
            "a wide MLP (64→2048→2048→10, random weights): compute-bound",
        ),
    }
    for m in models.values():
        if m.onnx_path.is_file() and (m.mlflow_dir / "MLmodel").is_file():
            continue
        log(f"  building model {m.name}")
        if m.name == "digits":
            train_digits_onnx(m.onnx_dir)
        else:
            build_wide_mlp(m.onnx_path)
        _save_mlflow(m.onnx_path, m.mlflow_dir)
    for rows in (1, 32):
        for fmt in ("score", "invocations"):
            body = payload_path(root, fmt, rows)
            if not body.is_file():
                body.write_text(json.dumps(payload(rows, fmt), separators=(",", ":")))
    return models


def payload_path(root: Path, fmt: str, rows: int) -> Path:
    """Return where the ``fmt`` (``score`` or ``invocations``) body of ``rows`` rows lies."""
    return root / f"payload-{fmt}-{rows}.json"
