"""The ASGI entry (for servers other than granian): the same app, in process, on the real model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from mlops_scoring.app import create_app
from mlops_scoring.models import OnnxModel
from mlops_scoring.settings import Settings

from tests.scoring.conftest import PRIMARY


def test_asgi_scores_and_answers_errors_like_rsgi(
    digits_model_dir: Path, keys_file: Path, digits_rows: list[list[float]]
) -> None:
    app = create_app(Settings(model_dir=digits_model_dir, keys_file=keys_file))

    async def scenario() -> list[httpx.Response]:
        await app.startup()
        try:
            transport = httpx.ASGITransport(app=app)
            auth = {"Authorization": f"Bearer {PRIMARY}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://asgi") as c:
                return [
                    await c.post("/score", json={"data": digits_rows[:2]}, headers=auth),
                    await c.post("/invocations", json={"inputs": digits_rows[:1]}, headers=auth),
                    await c.post("/score", json={"data": digits_rows[:1]}),
                    await c.get("/health/ready"),
                    await c.get("/nope"),
                ]
        finally:
            await app.shutdown(timeout=5)

    score, invocations, no_key, ready, missing = asyncio.run(scenario())
    assert score.status_code == 200 and len(score.json()["label"]) == 2
    assert score.headers["content-length"] == str(len(score.content)) and score.headers["x-request-id"]
    assert invocations.json()["predictions"]["label"] == score.json()["label"][:1]
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    assert ready.status_code == 200
    assert missing.status_code == 404 and json.loads(missing.content)["error"]["code"] == "not_found"


def test_onnx_threads_follow_the_model_cost_unless_set(digits_model_dir: Path) -> None:
    path = next(digits_model_dir.rglob("*.onnx"))
    cheap = OnnxModel(path)  # 0: chosen from the load-time probe
    assert cheap.row_cost_us is not None and cheap.row_cost_us > 0
    assert cheap.threads == 1, "the digits MLP is far below the compute-bound threshold"
    assert OnnxModel(path, threads=3).threads == 3
