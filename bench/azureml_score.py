"""Entry script for Azure ML's inference server: the equivalent of what our service does.

``init()`` loads ``model.onnx`` from ``AZUREML_MODEL_DIR`` into onnxruntime once; ``run()``
parses ``{"data": [[...], ...]}``, runs the model and returns the labels and probabilities.
This is how the Azure ML docs tell users to serve an ONNX model with ``azmlinfsrv``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort

session = None
input_name = None
output_names = None


def init():
    """Load the model once per worker."""
    global session, input_name, output_names
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]


def run(raw_data):
    """Score one request body (a JSON string) and return a JSON-able result."""
    data = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    outputs = session.run(output_names, {input_name: data})
    return {name: value.tolist() for name, value in zip(output_names, outputs, strict=True)}
