"""The ``/swagger.json`` document: OpenAPI 3 with the model's input and output schema."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlops_scoring import __version__
from mlops_scoring.models import TensorSpec

__all__ = ["openapi_document"]

_JSON_TYPES = {
    "tensor(float)": "number",
    "tensor(double)": "number",
    "tensor(float16)": "number",
    "tensor(bool)": "boolean",
    "tensor(string)": "string",
}


def _tensor_schema(spec: TensorSpec) -> dict[str, Any]:
    if spec.type.startswith("tensor("):
        leaf: dict[str, Any] = {"type": _JSON_TYPES.get(spec.type, "integer")}
        if spec.type == "tensor(uint8)":
            leaf = {"oneOf": [leaf, {"type": "string", "format": "byte"}]}
        schema = leaf
        for dim in reversed(spec.shape):
            schema = {"type": "array", "items": schema}
            if isinstance(dim, int):
                schema["minItems"] = schema["maxItems"] = dim
    else:  # sequences and maps (e.g. a ZipMap output): described, not typed
        schema = {}
    return {
        **schema,
        "description": f"{spec.type} {spec.shape_text()}",
        "x-onnx-type": spec.type,
        "x-onnx-shape": [d if isinstance(d, int) else (d or "N") for d in spec.shape],
    }


def _object(specs: Sequence[TensorSpec]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {s.name: _tensor_schema(s) for s in specs},
        "required": [s.name for s in specs],
    }


def openapi_document(
    service: str, inputs: Sequence[TensorSpec] | None, outputs: Sequence[TensorSpec] | None, auth: bool
) -> dict[str, Any]:
    """Return the OpenAPI 3 document; ``inputs`` is None for entry scripts (free-form JSON)."""
    if inputs is not None and outputs is not None:
        score_in = _object(inputs)
        score_out = _object(outputs)
        invocations_in: dict[str, Any] = {
            "type": "object",
            "description": "MLflow scoring protocol: exactly one of the properties.",
            "properties": {
                "inputs": {"oneOf": [score_in, next(iter(score_in["properties"].values()), {})]},
                "instances": {"type": "array"},
                "dataframe_split": {
                    "type": "object",
                    "properties": {"columns": {"type": "array"}, "data": {"type": "array"}},
                },
                "dataframe_records": {"type": "array", "items": {"type": "object"}},
            },
        }
    else:
        score_in = score_out = invocations_in = {
            "description": "free-form JSON handed to the entry script's run()"
        }
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "required": ["code", "message"],
            }
        },
    }

    def post(summary: str, req: str, resp: dict[str, Any]) -> dict[str, Any]:
        op: dict[str, Any] = {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": req}}}},
            "responses": {
                "200": {"description": "predictions", "content": {"application/json": {"schema": resp}}},
                **{
                    code: {
                        "description": text,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    }
                    for code, text in (
                        ("400", "malformed JSON"),
                        ("401", "missing or wrong key"),
                        ("413", "body too large"),
                        ("415", "not application/json"),
                        ("422", "input does not fit the model"),
                        ("503", "not ready or overloaded (see Retry-After)"),
                        ("504", "the model took too long"),
                    )
                },
            },
        }
        if auth:
            op["security"] = [{"bearer": []}]
        return op

    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": f"{service} scoring service", "version": __version__},
        "paths": {
            "/score": {
                "post": post(
                    "Score (Azure ML contract)",
                    "#/components/schemas/ScoreRequest",
                    {"$ref": "#/components/schemas/ScoreResponse"},
                )
            },
            "/invocations": {
                "post": post(
                    "Score (MLflow scoring protocol)",
                    "#/components/schemas/InvocationsRequest",
                    {
                        "type": "object",
                        "properties": {"predictions": {"$ref": "#/components/schemas/ScoreResponse"}},
                    },
                )
            },
            "/health/live": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/health/ready": {
                "get": {
                    "summary": "Readiness",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "loading or draining"},
                    },
                }
            },
            "/version": {"get": {"summary": "What runs", "responses": {"200": {"description": "versions"}}}},
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
            },
        },
        "components": {
            "schemas": {
                "ScoreRequest": score_in,
                "ScoreResponse": score_out,
                "InvocationsRequest": invocations_in,
                "Error": error,
            },
        },
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
