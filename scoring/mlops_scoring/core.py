"""The framework-free core: bytes in, model inputs out; model outputs in, bytes out.

Nothing here knows about RSGI, ASGI, sockets or the event loop, so each function can run
on the loop (small bodies) or in a thread (large ones) and be tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from mlops_scoring.errors import BadJson, BadRequest
from mlops_scoring.inputs import feeds_from_invocations, feeds_from_score
from mlops_scoring.models import TensorSpec

__all__ = [
    "decode_text",
    "encode_outputs",
    "encode_result",
    "parse_json",
    "parse_onnx_request",
    "wrap_predictions",
]

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    """Serialise what orjson does not: non-contiguous or object arrays, numpy scalars, sets."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        import base64

        return base64.b64encode(obj).decode()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def parse_json(body: bytes) -> Any:
    """Parse a JSON body.

    :raises BadJson: not JSON, or not UTF-8
    """
    if not body:
        raise BadJson("the body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadJson(f"the body is not valid JSON: {e.msg} at position {e.pos}") from e


def parse_onnx_request(
    route: str, body: bytes, specs: Sequence[TensorSpec]
) -> tuple[dict[str, np.ndarray], int]:
    """Return ``(feeds, rows)`` for a ``/score`` or ``/invocations`` body."""
    doc = parse_json(body)
    if route == "/invocations":
        return feeds_from_invocations(doc, specs)
    return feeds_from_score(doc, specs)


def encode_outputs(outputs: dict[str, Any]) -> bytes:
    """Return the JSON document of named model outputs (the ``/score`` response body)."""
    return orjson.dumps(outputs, default=_default, option=_DUMPS_OPTIONS)


def wrap_predictions(outputs: bytes) -> bytes:
    """Return the ``/invocations`` body ``{"predictions": <outputs>}`` around encoded outputs."""
    return b'{"predictions":' + outputs + b"}"


def encode_result(route: str, result: Any) -> bytes:
    """Return the JSON body for an entry script's ``run()`` result (JSON-encoded as is)."""
    payload: Any = {"predictions": result} if route == "/invocations" else result
    return orjson.dumps(payload, default=_default, option=_DUMPS_OPTIONS)


def decode_text(body: bytes) -> str:
    """Decode a body for an entry script's ``run(raw_data: str)``.

    :raises BadRequest: the body is not UTF-8
    """
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest("the body is not UTF-8 text") from e
