"""The scoring service's routes over real HTTP against a real ``mlops-serve`` process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.scoring.conftest import PRIMARY, SECONDARY, Server, start_server


def test_score_data_returns_named_outputs(onnx_server: Server, digits_rows: list[list[float]]) -> None:
    with onnx_server.client() as c:
        r = c.post("/score", json={"data": digits_rows[:3]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"label", "probabilities"}
    assert len(body["label"]) == 3
    assert np.asarray(body["probabilities"]).shape == (3, 10)
    assert body["label"] == [int(np.argmax(p)) for p in body["probabilities"]]


def test_score_named_input_and_int_cast(onnx_server: Server, digits_rows: list[list[float]]) -> None:
    ints = [[int(v) for v in row] for row in digits_rows[:2]]  # digits pixels are whole numbers
    with onnx_server.client() as c:
        named = c.post("/score", json={"input": ints}).json()
        data = c.post("/score", json={"data": digits_rows[:2]}).json()
    assert named["label"] == data["label"]


@pytest.mark.parametrize(
    "body",
    [
        "inputs",
        "inputs_named",
        "instances",
        "dataframe_split",
        "dataframe_records",
    ],
)
def test_invocations_mlflow_protocol(onnx_server: Server, digits_rows: list[list[float]], body: str) -> None:
    rows = digits_rows[:2]
    columns = [f"px{i}" for i in range(64)]
    payload = {
        "inputs": {"inputs": rows},
        "inputs_named": {"inputs": {"input": rows}},
        "instances": {"instances": rows},
        "dataframe_split": {"dataframe_split": {"columns": columns, "data": rows}},
        "dataframe_records": {"dataframe_records": [dict(zip(columns, r, strict=True)) for r in rows]},
    }[body]
    with onnx_server.client() as c:
        expected = c.post("/score", json={"data": rows}).json()
        r = c.post("/invocations", json=payload)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"]["label"] == expected["label"]


def test_health_routes_are_open(onnx_server: Server) -> None:
    with onnx_server.client(key=None) as c:
        assert c.get("/health/live").status_code == 200
        ready = c.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_request_id_is_echoed_or_generated(onnx_server: Server) -> None:
    with onnx_server.client() as c:
        echoed = c.get("/health/live", headers={"x-request-id": "abc-123"})
        generated = [c.get("/health/live").headers["x-request-id"] for _ in range(2)]
        failed = c.get("/nope", headers={"x-request-id": "err-1"})
    assert echoed.headers["x-request-id"] == "abc-123"
    assert generated[0] and generated[0] != generated[1]
    assert failed.headers["x-request-id"] == "err-1"


def test_version_discovers_the_model(onnx_server: Server) -> None:
    with onnx_server.client(key=None) as c:
        doc = c.get("/version").json()
    assert doc["service"] == {"name": "digits-svc", "version": "0.1.0"}
    assert doc["manifest_hash"] is None
    [model] = doc["models"]
    assert model["digest"].startswith("sha256:") and len(model["digest"]) == 71


def test_swagger_describes_the_model(onnx_server: Server) -> None:
    with onnx_server.client(key=None) as c:
        doc = c.get("/swagger.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/score", "/invocations", "/health/ready"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    inp = schemas["ScoreRequest"]["properties"]["input"]
    assert inp["x-onnx-type"] == "tensor(float)"
    assert inp["x-onnx-shape"][1] == 64
    assert inp["items"]["items"]["type"] == "number" and inp["items"]["maxItems"] == 64
    outs = schemas["ScoreResponse"]["properties"]
    assert outs["label"]["x-onnx-type"] == "tensor(int64)"
    assert outs["probabilities"]["x-onnx-shape"][1] == 10
    assert doc["paths"]["/score"]["post"]["security"] == [{"bearer": []}]


def test_metrics_after_requests(onnx_server: Server, digits_rows: list[list[float]]) -> None:
    with onnx_server.client() as c:
        for _ in range(3):
            assert c.post("/score", json={"data": digits_rows[:1]}).status_code == 200
        c.post("/score", content=b"{", headers={"content-type": "application/json"})
        text = c.get("/metrics").text
    assert c.get  # the client closed cleanly
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"
    }
    assert lines['mlops_scoring_requests_total{route="/score",status="200"}'] >= 3
    assert lines['mlops_scoring_requests_total{route="/score",status="400"}'] >= 1
    assert lines['mlops_scoring_request_duration_seconds_count{route="/score"}'] >= 4
    assert 'mlops_scoring_request_duration_seconds_bucket{route="/score",le="+Inf"}' in lines
    assert lines["mlops_scoring_batch_size_requests_count"] >= 3
    assert "mlops_scoring_queue_depth" in lines
    assert "mlops_scoring_in_flight" in lines
    assert "mlops_scoring_collector_buffered" not in lines  # collection is off here


def test_dynamic_batching_returns_each_caller_its_rows(
    onnx_server: Server, digits_rows: list[list[float]]
) -> None:
    rows = digits_rows * 4  # 32 distinct rows
    with onnx_server.client() as c:
        single = {i: c.post("/score", json={"data": [rows[i]]}).json() for i in range(len(rows))}

        def call(i: int) -> tuple[int, int, dict]:
            n = 1 + i % 5
            picked = [(i + k) % len(rows) for k in range(n)]
            r = c.post("/score", json={"data": [rows[j] for j in picked]})
            assert r.status_code == 200, r.text
            return i, n, {"picked": picked, **r.json()}

        with ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(call, range(96)))
        text = c.get("/metrics").text
    for _, n, body in results:
        assert len(body["label"]) == n
        for pos, j in enumerate(body["picked"]):
            assert body["label"][pos] == single[j]["label"][0]
            assert np.allclose(body["probabilities"][pos], single[j]["probabilities"][0], atol=1e-5)
    hist = {
        line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlops_scoring_batch_size_requests_bucket")
    }
    assert hist["+Inf"] > hist["1"], "no model call carried more than one request"


def _model_calls(text: str) -> dict[str, float]:
    prefix = 'mlops_scoring_model_calls_total{where="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_cheap_lone_calls_run_inline_unless_switched_off(
    onnx_server: Server, digits_model_dir: Path, keys_file: Path, digits_rows: list[list[float]]
) -> None:
    with onnx_server.client() as c:
        before = _model_calls(c.get("/metrics").text)
        for _ in range(3):
            assert c.post("/score", json={"data": digits_rows[:1]}).status_code == 200
        after = _model_calls(c.get("/metrics").text)
    assert after["inline"] - before["inline"] == 3, "the digits MLP costs far less than the hand-off"
    assert "on the event loop" in "".join(onnx_server.lines)

    server = start_server(
        "--model-dir", str(digits_model_dir), "--keys-file", str(keys_file), "--inline-max-us", "0"
    )
    try:
        with server.client() as c:
            for _ in range(3):
                r = c.post("/score", json={"data": digits_rows[:2]})
                assert r.status_code == 200 and len(r.json()["label"]) == 2
            calls = _model_calls(c.get("/metrics").text)
    finally:
        assert server.stop() == 0
    assert calls == {"thread": 3, "inline": 0}


def test_keys_primary_secondary_wrong_missing(onnx_server: Server, digits_rows: list[list[float]]) -> None:
    body = {"data": digits_rows[:1]}
    for key, status in ((PRIMARY, 200), (SECONDARY, 200), ("wrong", 401), (PRIMARY + "x", 401), (None, 401)):
        with onnx_server.client(key=key) as c:
            r = c.post("/score", json=body)
        assert r.status_code == status, (key, r.text)
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "unauthorized"
    with onnx_server.client(key=None) as c:
        basic = c.post("/score", json=body, headers={"Authorization": f"Basic {PRIMARY}"})
    assert basic.status_code == 401


def test_chunked_bodies_are_read_and_bounded(onnx_server: Server, digits_rows: list[list[float]]) -> None:
    row = ("[" + ",".join(str(v) for v in digits_rows[0]) + "]").encode()

    def chunks(n: int):  # a generator body: httpx sends it chunked, without Content-Length
        yield b'{"data": ['
        for i in range(n):
            yield (b"," if i else b"") + row
        yield b"]}"

    headers = {"content-type": "application/json"}
    with onnx_server.client() as c:
        ok = c.post("/score", content=chunks(3), headers=headers)
        big = c.post("/score", content=chunks(2000), headers=headers)  # over --max-body-bytes
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["label"]) == 3
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
