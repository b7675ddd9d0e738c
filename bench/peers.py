"""Start, check and stop the servers under test, each from its own venv, all on 127.0.0.1.

A *variant* is one way of running a peer: our service as shipped (auth on, validation and
metrics always on), with data collection at 100 %, with two workers, or with a small queue
for the overload test; MLflow's scoring server; Azure ML's inference server. Every server is
started in its own process group and stopped by signalling that group (SIGTERM, then SIGKILL
after a grace period), whatever happens: :func:`stop_all` runs on exit, on errors and on
Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs import PeerEnv
from load import ProcTree
from models import BenchModel, payload_path

__all__ = ["VARIANTS", "Server", "Variant", "start_server", "stop_all", "stop_server"]

BENCH_DIR = Path(__file__).resolve().parent
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Variant:
    """How to run one peer: which venv, which route and body shape, which extra flags."""

    name: str
    env: str  # key of envs.PEER_REQUIREMENTS
    route: str
    body_fmt: str  # "score" or "invocations"
    flags: tuple[str, ...] = ()
    label: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("ours", "ours", "/score", "score", label="ours (mlops-serve)"),
        Variant(
            "ours-collect",
            "ours",
            "/score",
            "score",
            ("--collect-sampling", "1.0"),
            label="ours, data collection 100 %",
        ),
        Variant("ours-w2", "ours", "/score", "score", ("--workers", "2"), label="ours, 2 workers"),
        Variant(
            "ours-thread",
            "ours",
            "/score",
            "score",
            ("--inline-max-us", "0"),
            label="ours, every model call on the model thread",
        ),
        Variant(
            "ours-overload",
            "ours",
            "/score",
            "score",
            ("--max-queue", "32", "--max-concurrent-requests", "8"),
            label="ours, max queue 32, max concurrent 8",
        ),
        Variant("mlflow", "mlflow", "/invocations", "invocations", label="mlflow models serve"),
        Variant("azureml", "azureml", "/score", "score", label="azmlinfsrv"),
    )
}


@dataclass
class Server:
    """A running server: its process group, URL, key and the request body it takes."""

    variant: Variant
    model: BenchModel
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    key: str | None = None
    workdir: Path | None = None
    tree: ProcTree = field(init=False)
    agrees: bool | None = None
    start_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.tree = ProcTree(self.proc.pid)

    @property
    def url(self) -> str:
        """Return the scoring URL."""
        return f"http://127.0.0.1:{self.port}{self.variant.route}"

    def body(self, models_root: Path, rows: int) -> Path:
        """Return the body file of ``rows`` rows in this server's shape."""
        return payload_path(models_root, self.variant.body_fmt, rows)

    def log_tail(self, lines: int = 8) -> str:
        """Return the last lines of the server's log, for a failure message."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


_RUNNING: list[Server] = []


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies without cleaning up (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(
    variant: Variant, env: PeerEnv, model: BenchModel, port: int, workdir: Path
) -> tuple[list[str], dict[str, str], str | None]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "AZUREML_", "MLFLOW_"))}
    base_env["PYTHONUNBUFFERED"] = "1"
    # As if the venv were activated: MLflow execs `uvicorn` and Azure ML `gunicorn` by name.
    base_env["VIRTUAL_ENV"] = str(env.path)
    base_env["PATH"] = f"{env.path / 'bin'}{os.pathsep}{base_env.get('PATH', '')}"
    if variant.env == "ours":
        key = os.urandom(16).hex()
        keys_file = workdir / "keys.json"
        keys_file.write_text(json.dumps({"primary_key": key, "secondary_key": os.urandom(16).hex()}))
        cmd = [
            str(env.bin("mlops-serve")),
            "--model-dir",
            str(model.onnx_dir),
            "--keys-file",
            str(keys_file),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--service-name",
            "bench",
            *variant.flags,
        ]
        if variant.name == "ours-collect":
            cmd += ["--collect-sink", str(workdir / "collected")]
        return cmd, base_env, key
    if variant.env == "mlflow":
        cmd = [
            str(env.bin("mlflow")),
            "models",
            "serve",
            "-m",
            str(model.mlflow_dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--env-manager",
            "local",
        ]
        return cmd, base_env, None
    # azmlinfsrv binds 0.0.0.0 with no flag to change it: run its own entry point with the
    # host constant set to loopback, so nothing listens beyond this machine.
    code = (
        "import sys, azureml_inference_server_http.amlserver as a; "
        "a.DEFAULT_HOST = '127.0.0.1'; sys.argv[0] = 'azmlinfsrv'; a.run()"
    )
    cmd = [
        str(env.bin("python")),
        "-c",
        code,
        "--entry_script",
        str(BENCH_DIR / "azureml_score.py"),
        "--model_dir",
        str(model.onnx_dir),
        "--port",
        str(port),
    ]
    base_env["AZUREML_MODEL_DIR"] = str(model.onnx_dir)
    return cmd, base_env, None


def _post(url: str, body: bytes, key: str | None, timeout: float = 10.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _labels(doc: Any) -> list[int] | None:
    """Find the ``label`` output in any peer's response shape."""
    if isinstance(doc, dict):
        if "label" in doc and isinstance(doc["label"], list):
            return [int(x) for x in doc["label"]]
        for value in doc.values():
            found = _labels(value)
            if found is not None:
                return found
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        rows = [_labels(d) for d in doc]
        if all(r is not None and len(r) == 1 for r in rows):
            return [r[0] for r in rows]  # type: ignore[index]
        if all(isinstance(d.get("label"), int) for d in doc):
            return [int(d["label"]) for d in doc]
    return None


def start_server(
    variant: Variant, env: PeerEnv, model: BenchModel, models_root: Path, logs: Path, expected: list[int]
) -> Server:
    """Start ``variant`` serving ``model`` and wait until it scores; check its answers.

    :param expected: the labels in-process onnxruntime gives for the 32-row payload
    :raises RuntimeError: the server exited or did not answer in time (with its log tail)
    """
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"{variant.name}-{model.name}-", dir=logs))
    cmd, env_vars, key = _command(variant, env, model, port, workdir)
    log_path = logs / f"{variant.name}-{model.name}.log"
    started = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd[:3])} ... port {port}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env_vars,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = Server(variant, model, port, proc, log_path, key=key, workdir=workdir)
    _RUNNING.append(server)
    one = server.body(models_root, 1).read_bytes()
    deadline = started + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{variant.name} exited with {proc.returncode}: {server.log_tail()}")
        try:
            status, _ = _post(server.url, one, key, timeout=5)
            if status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{variant.name} did not answer within {START_TIMEOUT_S:.0f} s: {server.log_tail()}"
            )
        time.sleep(0.25)
    server.start_seconds = time.monotonic() - started
    status, raw = _post(server.url, server.body(models_root, 32).read_bytes(), key, timeout=30)
    try:
        server.agrees = status == 200 and _labels(json.loads(raw)) == expected
    except ValueError:
        server.agrees = False
    return server


def stop_server(server: Server, grace_s: float = 20.0) -> int | None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
    if server in _RUNNING:
        _RUNNING.remove(server)
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return server.proc.poll()
    try:
        return server.proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)  # stragglers left in the group
    return server.proc.wait(timeout=10)


def stop_all() -> None:
    """Stop every server still running (on exit, errors and Ctrl-C)."""
    for server in list(_RUNNING):
        stop_server(server, grace_s=10.0)
