"""An Azure ML-style entry script, run unchanged, configured through env vars with auth off."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scoring.conftest import Server, start_server

SCRIPT = """
import json
import os
import pickle

import numpy as np

model = None


def init():
    global model
    path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model.pkl")
    with open(path, "rb") as f:
        model = pickle.load(f)


def run(raw_data):
    data = json.loads(raw_data)["data"]
    if data == "boom":
        raise ValueError("the script refused this input")
    return model.predict(np.array(data)).tolist()
"""


@pytest.fixture(scope="module")
def script_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, object]]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    clf = LogisticRegression(max_iter=300).fit(x[:500], y[:500])
    root = tmp_path_factory.mktemp("entry")
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "model.pkl").write_bytes(pickle.dumps(clf))
    script = root / "src" / "score.py"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    server = start_server(
        env={
            "AZUREML_MODEL_DIR": str(model_dir),
            "MLOPS_ENTRY_SCRIPT": str(script),
            "MLOPS_AUTH": "off",
            "MLOPS_SERVICE_NAME": "sk-svc",
        }
    )
    yield server, (clf, x[500:505])
    assert server.stop() == 0, "".join(server.lines)


def test_entry_script_scores_without_a_key(script_server: tuple[Server, object]) -> None:
    server, (clf, rows) = script_server  # type: ignore[misc]
    with server.client(key=None) as c:
        r = c.post("/score", json={"data": rows.tolist()})
        inv = c.post("/invocations", json={"data": rows.tolist()})
    assert r.status_code == 200, r.text
    assert r.json() == clf.predict(rows).tolist()
    assert inv.json() == {"predictions": clf.predict(rows).tolist()}


def test_entry_script_gets_the_raw_body(script_server: tuple[Server, object]) -> None:
    """The body goes to run() as a string, unparsed: text/plain JSON works, too."""
    server, (clf, rows) = script_server  # type: ignore[misc]
    with server.client(key=None) as c:
        r = c.post(
            "/score", content=json.dumps({"data": rows[:1].tolist()}), headers={"content-type": "text/plain"}
        )
    assert r.json() == clf.predict(rows[:1]).tolist()


def test_entry_script_error_is_a_clean_500(script_server: tuple[Server, object]) -> None:
    server, _ = script_server
    with server.client(key=None) as c:
        r = c.post("/score", json={"data": "boom"})
        bad = c.post("/score", content=b"not json", headers={"content-type": "application/json"})
        ready = c.get("/health/ready")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "run_failed"
    assert "refused" in r.json()["error"]["message"] and "Traceback" not in r.text
    assert bad.status_code == 500  # run() itself parses, so a JSON error is the script's own failure
    assert ready.status_code == 200


def test_entry_script_swagger_and_version(script_server: tuple[Server, object]) -> None:
    server, _ = script_server
    with server.client(key=None) as c:
        swagger = c.get("/swagger.json").json()
        version = c.get("/version").json()
    assert "security" not in swagger["paths"]["/score"]["post"]
    assert "run()" in swagger["components"]["schemas"]["ScoreRequest"]["description"]
    assert version["service"]["name"] == "sk-svc"
    assert version["models"][0]["name"] == "model"


def test_missing_keys_file_means_no_start(tmp_path: Path, digits_model_dir: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "mlops_scoring", "--model-dir", str(digits_model_dir), "--port", "5999"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "--no-auth" in proc.stderr and "--keys-file" in proc.stderr
