"""One virtual environment per peer under ``.bench/venvs/``: created once, reused after.

Each environment carries a stamp: a hash of what was asked for (the requirement list, the
constraints file, and for our own service the content of ``scoring/``). A changed stamp
re-runs ``pip install`` in the same venv, so a fresh clone builds everything and a second run
costs nothing. A peer whose install fails is recorded with the reason (the tail of pip's
output) instead of failing the whole benchmark.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PEER_REQUIREMENTS", "PeerEnv", "prepare_env"]

REPO = Path(__file__).resolve().parent.parent

#: What each peer's venv gets, pinned through the repo's constraints file where it pins.
PEER_REQUIREMENTS: dict[str, list[str]] = {
    # Our service exactly as a user installs it: the scoring distribution and its own deps.
    "ours": ["./scoring"],
    # MLflow's scoring server: `mlflow models serve --env-manager local` on an mlflow.onnx model.
    "mlflow": ["mlflow", "onnx", "onnxruntime"],
    # Azure ML's inference server running an equivalent score.py on onnxruntime. It pins its
    # own web stack (gunicorn, opentelemetry) apart from ours, so it skips our constraints
    # file and only gets onnxruntime pinned to the version the others use.
    "azureml": ["azureml-inference-server-http", "onnxruntime", "numpy"],
}

#: Peers installed with the repo's constraints file (versions identical to the main venv).
_CONSTRAINED = frozenset({"ours", "mlflow"})


def _pinned(requirements: list[str], constraints: Path) -> list[str]:
    """Pin ``onnxruntime`` to the constraints file's version without applying the whole file."""
    pins = {}
    if constraints.is_file():
        for line in constraints.read_text().splitlines():
            name, sep, version = line.strip().partition("==")
            if sep:
                pins[name.lower()] = version
    return [f"{r}=={pins[r]}" if r == "onnxruntime" and r in pins else r for r in requirements]


@dataclass
class PeerEnv:
    """A peer's environment, or why there is none."""

    name: str
    path: Path
    ok: bool
    reason: str = ""
    seconds: float = 0.0
    versions: dict[str, str] | None = None

    def bin(self, tool: str) -> Path:
        """Return the path of ``tool`` in the venv's ``bin``."""
        return self.path / "bin" / tool


def _stamp(requirements: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(requirements).encode())
    constraints = REPO / "constraints.txt"
    if constraints.is_file() and ("./scoring" in requirements or "mlflow" in requirements):
        digest.update(constraints.read_bytes())
    if "./scoring" in requirements:
        for path in sorted((REPO / "scoring").rglob("*")):
            if path.is_file() and path.suffix in (".py", ".toml", ".cfg") and "egg-info" not in str(path):
                digest.update(str(path.relative_to(REPO)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _base_python() -> str:
    """Return the interpreter the main venv was made from (a venv's own python would nest)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _versions(env: Path) -> dict[str, str]:
    wanted = (
        "airflow-mlops-scoring",
        "onnxruntime",
        "numpy",
        "granian",
        "uvicorn",
        "mlflow",
        "fastapi",
        "azureml-inference-server-http",
        "flask",
        "gunicorn",
    )
    out = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, _, version = line.partition("==")
        if name.lower() in wanted:
            found[name.lower()] = version
    return found


def prepare_env(name: str, root: Path, *, log=print) -> PeerEnv:
    """Create or refresh the venv of peer ``name`` under ``root``; never raise on a failed install.

    :param name: a key of :data:`PEER_REQUIREMENTS`
    :param root: the folder holding all peer venvs (``.bench/venvs``)
    :param log: where progress lines go
    """
    constraints = REPO / "constraints.txt"
    requirements = PEER_REQUIREMENTS[name]
    if name not in _CONSTRAINED:
        requirements = _pinned(requirements, constraints)
    path = root / name
    stamp_file = path / ".bench-stamp"
    stamp = _stamp(requirements)
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return PeerEnv(name, path, ok=True, versions=_versions(path))
    started = time.monotonic()
    log(f"  preparing venv {path} ({' '.join(requirements)})")
    try:
        if not (path / "bin" / "python").exists():
            subprocess.run(
                [_base_python(), "-m", "venv", str(path)], check=True, capture_output=True, timeout=300
            )
        cmd = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if name in _CONSTRAINED and constraints.is_file():
            cmd += ["-c", str(constraints)]
        proc = subprocess.run(
            [*cmd, *requirements], cwd=REPO, capture_output=True, text=True, timeout=1800, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        return PeerEnv(name, path, ok=False, reason=f"venv creation failed: {e}")
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = [
            ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "is ignored" not in ln
        ]
        reason = "pip install failed: " + " | ".join(tail[-4:])
        return PeerEnv(name, path, ok=False, reason=reason, seconds=seconds)
    stamp_file.write_text(stamp)
    return PeerEnv(name, path, ok=True, seconds=seconds, versions=_versions(path))
