"""Turn parsed JSON into the model's input arrays, and check them against its signature.

Two request shapes reach here: Azure ML's ``/score`` body (``{"data": ...}`` or one key per
named input) and MLflow's ``/invocations`` body (``inputs``, ``instances``,
``dataframe_split``, ``dataframe_records``). Both end as ``{input name: ndarray}`` with the
declared dtype and rank, the same number of rows in every input, and at least one row.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlops_scoring.errors import (
    BadRequest,
    EmptyBatch,
    InvalidDtype,
    InvalidInput,
    InvalidShape,
    MissingInput,
    UnknownInput,
)
from mlops_scoring.models import TensorSpec

__all__ = ["feeds_from_invocations", "feeds_from_score", "to_array"]

_MLFLOW_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records")


def feeds_from_score(body: Any, specs: Sequence[TensorSpec]) -> tuple[dict[str, np.ndarray], int]:
    """Return ``(feeds, rows)`` for an Azure ML ``/score`` body.

    :param body: the parsed JSON
    :param specs: the model's inputs
    """
    if not isinstance(body, dict):
        raise InvalidInput('the body must be a JSON object: {"data": [[...]]} or {"<input name>": [[...]]}')
    if len(specs) == 1 and "data" in body and len(body) == 1 and specs[0].name != "data":
        data = body["data"]
        if isinstance(data, dict):
            return _named(data, specs)
        return _named({specs[0].name: data}, specs)
    if "data" in body and len(body) == 1 and isinstance(body["data"], dict):
        return _named(body["data"], specs)
    return _named(body, specs)


def feeds_from_invocations(body: Any, specs: Sequence[TensorSpec]) -> tuple[dict[str, np.ndarray], int]:
    """Return ``(feeds, rows)`` for an MLflow scoring-protocol ``/invocations`` body."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object with one of: " + ", ".join(_MLFLOW_KEYS))
    found = [k for k in _MLFLOW_KEYS if k in body]
    if len(found) != 1:
        raise InvalidInput("the body must hold exactly one of: " + ", ".join(_MLFLOW_KEYS))
    key = found[0]
    value = body[key]
    if key in ("inputs", "instances"):
        if isinstance(value, dict):
            return _named(value, specs)
        if key == "instances" and isinstance(value, list) and value and isinstance(value[0], dict):
            return _named(_columns_of_records(value), specs)
        return _single(value, specs)
    if key == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise InvalidInput('dataframe_split must be {"columns": [...], "data": [[...], ...]}')
        columns = value.get("columns")
        rows = value["data"]
        if isinstance(columns, list) and len(specs) > 1 and set(columns) >= {s.name for s in specs}:
            return _named({c: [r[i] for r in rows] for i, c in enumerate(columns)}, specs)
        return _single(rows, specs)
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise InvalidInput("dataframe_records must be a list of objects")
    if not value:
        raise EmptyBatch("the request holds no rows")
    names = {s.name for s in specs}
    if len(specs) > 1 and set(value[0]) >= names:
        return _named(_columns_of_records(value), specs)
    columns = list(value[0])
    try:
        matrix = [[r[c] for c in columns] for r in value]
    except KeyError as e:
        raise InvalidInput(f"dataframe_records: a record lacks column {e.args[0]!r}") from e
    return _single(matrix, specs)


def _columns_of_records(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    try:
        return {k: [r[k] for r in records] for k in records[0]}
    except KeyError as e:
        raise InvalidInput(f"a record lacks {e.args[0]!r}") from e


def _single(value: Any, specs: Sequence[TensorSpec]) -> tuple[dict[str, np.ndarray], int]:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise MissingInput(f"the model has several inputs ({names}): name each one")
    return _named({specs[0].name: value}, specs)


def _named(values: dict[str, Any], specs: Sequence[TensorSpec]) -> tuple[dict[str, np.ndarray], int]:
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in values:
            raise MissingInput(f"input {spec.name!r} is missing ({spec.type} {spec.shape_text()})")
        feeds[spec.name] = to_array(values[spec.name], spec)
    if len(values) > len(feeds):
        extra = sorted(k for k in values if k not in feeds)
        raise UnknownInput(f"the model has no input named {', '.join(map(repr, extra))}")
    rows = -1
    for spec in specs:
        arr = feeds[spec.name]
        n = arr.shape[0] if arr.ndim else 1
        if rows == -1:
            rows = n
        elif n != rows and spec.batch_free:
            raise InvalidShape(f"inputs disagree on the number of rows ({rows} vs {n} in {spec.name!r})")
    return feeds, max(rows, 0)


def to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    """Cast ``value`` to ``spec``'s dtype and check its shape.

    :raises InvalidDtype: the values cannot be cast
    :raises InvalidShape: rank or a fixed dimension does not match
    :raises EmptyBatch: there are no rows
    """
    dtype = spec.dtype
    if dtype is None:
        raise BadRequest(f"input {spec.name!r} has type {spec.type}, which JSON cannot carry")
    if dtype is np.uint8 and _is_b64(value):
        arr = _from_base64(value, spec)
    elif dtype is np.object_:
        arr = _strings(value, spec)
    else:
        arr = _numbers(value, spec, dtype)
    _check_shape(arr, spec)
    return arr


def _numbers(value: Any, spec: TensorSpec, dtype: Any) -> np.ndarray:
    try:
        if spec.integral:
            raw = np.asarray(value)
            if raw.dtype.kind not in "biuf" and raw.size:
                raise TypeError(raw.dtype)
            if raw.dtype.kind == "f" and raw.size and not np.all(np.mod(raw, 1) == 0):
                raise InvalidDtype(f"input {spec.name!r} is {spec.type}: got fractional numbers")
            return raw.astype(dtype)
        arr = np.array(value, dtype=dtype)
    except InvalidDtype:
        raise
    except ValueError as e:
        if "inhomogeneous" in str(e) or "sequence" in str(e):
            raise InvalidShape(f"input {spec.name!r} is ragged: every row must have the same length") from e
        raise InvalidDtype(f"input {spec.name!r} is {spec.type}: values are not all numbers") from e
    except (TypeError, OverflowError) as e:
        raise InvalidDtype(f"input {spec.name!r} is {spec.type}: values are not all numbers") from e
    return arr


def _strings(value: Any, spec: TensorSpec) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.object_)
    except ValueError as e:
        raise InvalidShape(f"input {spec.name!r} is ragged") from e
    for item in arr.flat:
        if not isinstance(item, str):
            raise InvalidDtype(f"input {spec.name!r} is {spec.type}: every value must be a string")
    return arr


def _is_b64(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and bool(value) and isinstance(value[0], str))


def _from_base64(value: Any, spec: TensorSpec) -> np.ndarray:
    items = [value] if isinstance(value, str) else value
    try:
        rows = [np.frombuffer(base64.b64decode(v, validate=True), dtype=np.uint8) for v in items]
    except (binascii.Error, ValueError, TypeError) as e:
        raise InvalidDtype(f"input {spec.name!r}: not valid base64") from e
    if len({len(r) for r in rows}) > 1:
        raise InvalidShape(f"input {spec.name!r}: decoded rows differ in length")
    arr = np.stack(rows)
    fixed = spec.shape[1:]
    if len(spec.shape) != 2 and all(isinstance(d, int) for d in fixed):
        try:
            arr = arr.reshape((arr.shape[0], *fixed))  # type: ignore[arg-type]
        except ValueError as e:
            raise InvalidShape(
                f"input {spec.name!r}: {arr.shape[1]} bytes do not fit {spec.shape_text()}"
            ) from e
    if isinstance(value, str) and len(spec.shape) == 1:
        arr = arr[0]
    return arr


def _check_shape(arr: np.ndarray, spec: TensorSpec) -> None:
    if arr.ndim and arr.shape[0] == 0:
        raise EmptyBatch(f"input {spec.name!r} holds no rows")
    if arr.ndim != len(spec.shape):
        raise InvalidShape(
            f"input {spec.name!r} must be {spec.shape_text()} ({len(spec.shape)}-D), "
            f"got {arr.ndim}-D {list(arr.shape)}"
        )
    shape = arr.shape
    for axis, want in spec.fixed:
        if shape[axis] != want:
            raise InvalidShape(
                f"input {spec.name!r} must be {spec.shape_text()}: dimension {axis} is {shape[axis]}, "
                f"expected {want}"
            )
