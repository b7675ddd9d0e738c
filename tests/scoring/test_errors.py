"""The bad-input battery: each mistake gets its status and error code, and the server stays ready."""

from __future__ import annotations

import base64

import pytest

from tests.scoring.conftest import Server

JSON = {"content-type": "application/json"}
ROW = [0.0] * 64


@pytest.mark.parametrize(
    ("method", "path", "content", "headers", "status", "code"),
    [
        ("POST", "/score", b"{not json", JSON, 400, "bad_json"),
        ("POST", "/score", b"", JSON, 400, "bad_json"),
        ("POST", "/score", b"\xff\xfe", JSON, 400, "bad_json"),
        ("POST", "/score", b'{"data": [[1]]}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (
            "POST",
            "/score",
            b"data=1",
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/score",
            b'{"data": [' + b",".join([b"[" + b",".join([b"1"] * 64) + b"]"] * 2000) + b"]}",
            JSON,
            413,
            "payload_too_large",
        ),
        ("POST", "/score", b'{"other": [[1]]}', JSON, 422, "missing_input"),
        ("POST", "/score", b"[1, 2]", JSON, 422, "invalid_input"),
        ("POST", "/score", b'{"data": [[1, 2, 3]]}', JSON, 422, "invalid_shape"),
        ("POST", "/score", b'{"data": [1, 2, 3]}', JSON, 422, "invalid_shape"),
        ("POST", "/score", b'{"data": [[1, 2], [1]]}', JSON, 422, "invalid_shape"),
        ("POST", "/score", b'{"data": [["a", "b"]]}', JSON, 422, "invalid_dtype"),
        ("POST", "/score", b'{"data": [[{"x": 1}]]}', JSON, 422, "invalid_dtype"),
        ("POST", "/score", b'{"data": []}', JSON, 422, "empty_batch"),
        ("POST", "/score", b'{"data": [[]]}', JSON, 422, "invalid_shape"),
        (
            "POST",
            "/score",
            b'{"input": [[' + b",".join([b"0"] * 64) + b']], "extra": 1}',
            JSON,
            422,
            "unknown_input",
        ),
        ("POST", "/invocations", b'{"rows": [[1]]}', JSON, 422, "invalid_input"),
        ("POST", "/invocations", b'{"inputs": [], "instances": []}', JSON, 422, "invalid_input"),
        ("POST", "/invocations", b'{"dataframe_records": []}', JSON, 422, "empty_batch"),
        ("POST", "/invocations", b'{"dataframe_split": {"data": "x"}}', JSON, 422, "invalid_input"),
        ("GET", "/nope", b"", {}, 404, "not_found"),
        ("POST", "/health/ready", b"", {}, 405, "method_not_allowed"),
        ("GET", "/score", b"", {}, 405, "method_not_allowed"),
        ("DELETE", "/invocations", b"", {}, 405, "method_not_allowed"),
    ],
)
def test_bad_input_gets_status_and_code(
    onnx_server: Server,
    method: str,
    path: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    with onnx_server.client() as c:
        r = c.request(method, path, content=content, headers=headers)
        assert r.status_code == status, r.text
        body = r.json()
        assert body["error"]["code"] == code
        assert body["error"]["message"]
        assert "Traceback" not in r.text
        if status == 405:
            assert r.headers["allow"] in ("GET", "POST")
    with onnx_server.client(key=None) as c:
        assert c.get("/health/ready").status_code == 200


def test_fractional_values_for_an_int_input_are_refused() -> None:
    """Integer inputs refuse 1.5 rather than truncating it (the core, without a server)."""
    from mlops_scoring.errors import InvalidDtype
    from mlops_scoring.inputs import to_array
    from mlops_scoring.models import TensorSpec

    spec = TensorSpec("ids", "tensor(int64)", (None, 2))
    assert to_array([[1.0, 2.0]], spec).dtype.name == "int64"
    with pytest.raises(InvalidDtype):
        to_array([[1.5, 2.0]], spec)


def test_base64_for_uint8_inputs() -> None:
    """Binary inputs come as base64 strings, one per row, reshaped to the declared shape."""
    from mlops_scoring.errors import InvalidDtype, InvalidShape
    from mlops_scoring.inputs import to_array
    from mlops_scoring.models import TensorSpec

    spec = TensorSpec("image", "tensor(uint8)", (None, 2, 2))
    arr = to_array([base64.b64encode(bytes([1, 2, 3, 4])).decode()], spec)
    assert arr.shape == (1, 2, 2) and arr.tolist() == [[[1, 2], [3, 4]]]
    with pytest.raises(InvalidDtype):
        to_array(["***"], spec)
    with pytest.raises(InvalidShape):
        to_array([base64.b64encode(b"abc").decode()], spec)


def test_server_stays_healthy_after_the_battery(onnx_server: Server) -> None:
    with onnx_server.client() as c:
        for _ in range(20):
            c.post("/score", content=b"][", headers=JSON)
        assert c.post("/score", json={"data": [ROW]}).status_code == 200
        assert c.get("/health/live").status_code == 200
        assert c.get("/health/ready").status_code == 200
