"""MlflowRegistryHook against real MLflow: the embedded SQLite default and a server on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from airflow_mlops.exceptions import ModelInUseError, ModelNotFound, RegistryError
from airflow_mlops.hooks.registry import MlflowRegistryHook, _user_tag, folder_digest

CONN_ID = "mlflow_test"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def hook(backend: str) -> MlflowRegistryHook:
    return MlflowRegistryHook(mlflow_conn_id=CONN_ID)


def _files(folder: str | Path) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_embedded_default_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a connection: SQLite at $MLOPS_HOME/mlflow.db, every artifact under $MLOPS_HOME/mlartifacts."""
    home = tmp_path / "home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    caplog.set_level("INFO", logger="airflow_mlops.hooks.registry")
    hook = MlflowRegistryHook()
    registered = hook.register_model("embedded", str(model_dir))

    assert hook.settings.embedded and hook.settings.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert (home / "mlflow.db").is_file()
    artifacts = home / "mlartifacts"
    assert hook.client.get_experiment("0").artifact_location == artifacts.joinpath("0").as_uri()
    stored = hook.get_model_version("embedded", registered["version"])["source"]
    assert stored.startswith(artifacts.as_uri() + "/")
    assert len([r for r in caplog.records if "embedded default" in r.getMessage()]) == 1
    assert hook.test_connection()[0] is True


def test_register_file_and_folder(
    hook: MlflowRegistryHook, model_name: str, model_dir: Path, tmp_path: Path
) -> None:
    """Versions count up per name; a folder keeps its layout, a file is registered alone."""
    first = hook.register_model(model_name, model_dir)
    second = hook.register_model(model_name, str(model_dir / "model.onnx"))
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["uri"] == f"models:/{model_name}/1" and first["name"] == model_name and first["model_id"]

    assert _files(hook.download_model(model_name, 1, tmp_path / "v1").path) == _files(model_dir)
    assert _files(hook.download_model(model_name, "2", tmp_path / "v2").path) == {
        "model.onnx": (model_dir / "model.onnx").read_bytes()
    }
    with pytest.raises(RegistryError, match="does not exist"):
        hook.register_model(model_name, str(tmp_path / "missing"))


def test_register_from_run_and_model_uris(
    hook: MlflowRegistryHook, model_name: str, model_dir: Path, tmp_path: Path
) -> None:
    """``runs:/`` and ``models:/`` sources are copied into a new version."""
    client = hook.client
    experiment = client.get_experiment_by_name("airflow-mlops") or client.get_experiment(
        client.create_experiment("airflow-mlops")
    )
    run = client.create_run(experiment.experiment_id)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    from_run = hook.register_model(model_name, f"runs:/{run.info.run_id}/model", aliases=["champion"])
    assert hook.get_model_version(model_name, from_run["version"])["run_id"]
    assert _files(hook.download_model(model_name, from_run["version"], tmp_path / "run").path) == _files(
        model_dir
    )

    copy = hook.register_model(f"{model_name}-copy", f"models:/{model_name}@champion")
    assert _files(hook.download_model(copy["name"], copy["version"], tmp_path / "copy").path) == _files(
        model_dir
    )
    again = hook.register_model(f"{model_name}-copy", f"models:/{model_name}/1")
    assert again["version"] == "2"


def test_tags_description_aliases(hook: MlflowRegistryHook, model_name: str, model_dir: Path) -> None:
    v1 = hook.register_model(
        model_name,
        model_dir,
        description="first",
        tags={"team": "fraud", "stage": "dev"},
        aliases=["champion"],
    )
    hook.register_model(model_name, model_dir, aliases=["candidate"])

    got = hook.get_model_version(model_name, v1["version"])
    assert got["description"] == "first" and got["tags"]["team"] == "fraud" and got["aliases"] == ["champion"]
    assert hook.resolve_version(model_name, "latest") == "2"
    assert hook.resolve_version(model_name, 1) == "1"
    assert hook.resolve_version(model_name, "@champion") == "1"
    assert hook.get_model_version(model_name, alias="candidate")["version"] == "2"
    assert hook.get_model_version(model_name)["version"] == "2"

    hook.set_alias(model_name, "champion", 2)
    assert hook.resolve_version(model_name, "@champion") == "2"
    hook.delete_alias(model_name, "candidate")
    with pytest.raises(ModelNotFound):
        hook.resolve_version(model_name, "@candidate")
    with pytest.raises(ModelNotFound):
        hook.get_model_version(f"{model_name}-nope", 1)
    with pytest.raises(ValueError, match="not a number"):
        hook.resolve_version(model_name, "v2")


def test_search_by_name_and_tags(hook: MlflowRegistryHook, model_name: str, model_dir: Path) -> None:
    """Tag values with quotes and keys with spaces match exactly; other models never leak in."""
    hook.register_model(model_name, model_dir, tags={"team": "it's ours", "data set": "a"})
    hook.register_model(model_name, model_dir, tags={"team": "theirs", "data set": "a"})
    hook.register_model(f"{model_name}-other", model_dir, tags={"team": "it's ours"})

    hook.set_alias(model_name, "champion", 1)
    by_name = hook.search_model_versions(name=model_name)
    assert [v["version"] for v in by_name] == ["2", "1"]
    assert [v["aliases"] for v in by_name] == [[], ["champion"]]
    assert {v["name"] for v in by_name} == {model_name}
    ours = hook.search_model_versions(name=model_name, tags={"team": "it's ours"})
    assert [v["version"] for v in ours] == ["1"]
    both = hook.search_model_versions(tags={"team": "it's ours"})
    assert {v["name"] for v in both} >= {model_name, f"{model_name}-other"}
    assert len(hook.search_model_versions(name=model_name, tags={"data set": "a"})) == 2
    assert hook.search_model_versions(name=model_name, tags={"team": "nobody"}) == []
    assert hook.search_model_versions(name=f"{model_name}-absent") == []


def test_download_digest(hook: MlflowRegistryHook, model_name: str, model_dir: Path, tmp_path: Path) -> None:
    """The digest is stable across downloads and changes with content; a used folder is refused."""
    hook.register_model(model_name, model_dir)
    (model_dir / "model.onnx").write_bytes(b"other bytes")
    hook.register_model(model_name, model_dir)

    a = hook.download_model(model_name, 1, tmp_path / "a")
    b = hook.download_model(model_name, "1", tmp_path / "b")
    c = hook.download_model(model_name, "latest", tmp_path / "c")
    assert a.digest == b.digest == folder_digest(a.path) and a.digest.startswith("sha256:")
    assert c.digest != a.digest and c.version == "2" and c.uri == f"models:/{model_name}/2"
    assert c.digest == folder_digest(model_dir)
    with pytest.raises(RegistryError, match="not empty"):
        hook.download_model(model_name, 1, tmp_path / "a")
    with pytest.raises(ModelNotFound):
        hook.download_model(model_name, 9, tmp_path / "d")


def test_baseline_round_trip(
    hook: MlflowRegistryHook, model_name: str, model_dir: Path, tmp_path: Path
) -> None:
    """The baseline reads back as stored and is neither downloaded nor hashed with the model."""
    baseline = {"features": {"f0": {"mean": 1.5, "hist": [1, 2, 3]}}, "rows": 1000}
    with_baseline = hook.register_model(model_name, model_dir, baseline=baseline)
    without = hook.register_model(model_name, model_dir)

    assert hook.get_baseline(model_name, with_baseline["version"]) == baseline
    assert hook.get_baseline(model_name, without["version"]) is None
    a = hook.download_model(model_name, with_baseline["version"], tmp_path / "a")
    b = hook.download_model(model_name, without["version"], tmp_path / "b")
    assert _files(a.path) == _files(model_dir) and a.digest == b.digest
    with pytest.raises(RegistryError, match="JSON"):
        hook.register_model(model_name, model_dir, baseline={"bad": object()})


def test_concurrent_registrations_get_distinct_versions(
    hook: MlflowRegistryHook, model_name: str, model_dir: Path
) -> None:
    """Four threads, each with its own hook, register the same name at once."""
    results: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def register() -> None:
        try:
            own = MlflowRegistryHook(mlflow_conn_id=CONN_ID)
            own.client  # noqa: B018 - build the client before the race starts
            start.wait()
            results.append(own.register_model(model_name, model_dir)["version"])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results, key=int) == ["1", "2", "3", "4"]


def test_concurrent_processes_on_a_fresh_embedded_registry(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three processes create the same fresh SQLite registry and register one name at once."""
    script = (
        "import sys\n"
        "from airflow_mlops.hooks.registry import MlflowRegistryHook\n"
        "print(MlflowRegistryHook().register_model('racy', sys.argv[1])['version'])\n"
    )
    env = {**os.environ, "MLOPS_HOME": str(tmp_path / "home")}
    env.pop("AIRFLOW_CONN_MLFLOW_DEFAULT", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(model_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    versions = sorted(out.decode().strip().splitlines()[-1] for out, _ in outputs)
    assert versions == ["1", "2", "3"]


def test_delete_guard(hook: MlflowRegistryHook, model_name: str, model_dir: Path) -> None:
    """A version in use cannot be deleted; once released it can."""
    v = hook.register_model(model_name, model_dir)["version"]
    other = hook.register_model(model_name, model_dir)["version"]
    hook.mark_in_use(model_name, v, "deployment:local/svc")
    hook.mark_in_use(model_name, v, "image:airflow-mlops/scoring:abc123")
    hook.mark_in_use(model_name, v, "deployment:local/svc")  # idempotent
    assert hook.users(model_name, v) == ["deployment:local/svc", "image:airflow-mlops/scoring:abc123"]
    assert (
        hook.get_model_version(model_name, v)["tags"]["mlops.deployment.local/svc"] == "deployment:local/svc"
    )

    with pytest.raises(ModelInUseError, match="deployment:local/svc") as caught:
        hook.delete_model_version(model_name, v)
    assert caught.value.users == ["deployment:local/svc", "image:airflow-mlops/scoring:abc123"]
    with pytest.raises(ModelInUseError):
        hook.delete_model(model_name)

    hook.release(model_name, v, "deployment:local/svc")
    hook.release(model_name, v, "deployment:local/svc")  # releasing twice is harmless
    assert hook.users(model_name, v) == ["image:airflow-mlops/scoring:abc123"]
    hook.release(model_name, v, "image:airflow-mlops/scoring:abc123")
    hook.delete_model_version(model_name, v)
    with pytest.raises(ModelNotFound):
        hook.get_model_version(model_name, v)
    assert [x["version"] for x in hook.search_model_versions(name=model_name)] == [other]
    hook.delete_model(model_name)
    assert hook.search_model_versions(name=model_name) == []


def test_user_tag_keys() -> None:
    """Users map to MLflow-valid tag keys; unusual characters are encoded without collisions."""
    assert _user_tag("deployment:local/svc") == "mlops.deployment.local/svc"
    a, b = _user_tag("image:reg/scoring:v1"), _user_tag("image:reg/scoring_v1")
    assert a.startswith("mlops.image.reg/scoring_v1.") and b == "mlops.image.reg/scoring_v1" and a != b
    assert ".." not in _user_tag("deployment:k8s/../x").removeprefix("mlops.deployment.").split(".")[0]
    for bad in ("svc", "pod:x", "deployment:"):
        with pytest.raises(ValueError):
            _user_tag(bad)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        body = json.dumps({"registered_models": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        ({"login": "alice", "password": "s3cret-pass"}, "Basic YWxpY2U6czNjcmV0LXBhc3M="),
        ({"extra": {"token": "tok-123456"}}, "Bearer tok-123456"),
    ],
)
def test_credentials_reach_the_server_but_not_the_environment(
    monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], expected: str
) -> None:
    """The connection's auth is sent as a header (real HTTP) and never put into ``os.environ``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv(
            "AIRFLOW_CONN_MLFLOW_AUTH", json.dumps({"conn_type": "mlflow", "host": url, **conn})
        )
        before = dict(os.environ)
        ok, message = MlflowRegistryHook(mlflow_conn_id="mlflow_auth").test_connection()
        assert ok, message
        assert dict(os.environ) == before
        assert _Recorder.seen and all(h.get("Authorization") == expected for h in _Recorder.seen)
        # Outside the hook's calls MLflow sends no credentials.
        from mlflow import MlflowClient

        MlflowClient(url, url).search_registered_models(max_results=1)
        assert "Authorization" not in _Recorder.seen[-1]
    finally:
        server.shutdown()
        server.server_close()


def test_test_connection_reports_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DOWN", json.dumps({"conn_type": "mlflow", "host": "http://127.0.0.1:9"})
    )
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    ok, message = MlflowRegistryHook(mlflow_conn_id="mlflow_down").test_connection()
    assert not ok and "127.0.0.1:9" in message


def test_server_backend_uses_the_connection(hook: MlflowRegistryHook, backend: str) -> None:
    assert hook.test_connection()[0] is True
    assert hook.settings.embedded is (backend == "sqlite")
    if backend == "server":
        assert hook.settings.tracking_uri.startswith("http://127.0.0.1:")
