"""The wheelhouse: every wheel a scoring image installs, resolved on the build host.

``docker build`` must not reach a package index (hermetic, reproducible, air-gap friendly),
so the build host resolves the dependencies once with its own pip and its own index
settings (``pip.conf``, ``PIP_INDEX_URL``…) for the image's interpreter and platform
(``--only-binary=:all: --platform manylinux_2_36_x86_64 --python-version 3.11``), and the
image installs them with ``pip install --no-index --find-links``. The scoring service is
built as a wheel from its source tree (or, when only the installed package exists, fetched
at its pinned version).

Wheelhouses are cached under ``$MLOPS_HOME/wheelhouse/<key>/`` where the key hashes the
requirements, the scoring service's digest and the platform; a complete wheelhouse holds a
``.complete`` marker and is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from airflow_mlops.constants import mlops_home
from airflow_mlops.exceptions import ImageBuildError

__all__ = ["REQUIREMENTS_FILE", "SCORING_DISTRIBUTION", "resolve_wheelhouse", "scoring_source_tree"]

log = logging.getLogger(__name__)

SCORING_DISTRIBUTION = "airflow-mlops-scoring"
#: The file in a wheelhouse naming what the image installs.
REQUIREMENTS_FILE = "requirements.txt"
_COMPLETE = ".complete"


def scoring_source_tree() -> Path | None:
    """Return the scoring service's source tree (holding ``pyproject.toml``), if installed from one."""
    import mlops_scoring

    root = Path(mlops_scoring.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def _compatible_platforms(platform: str) -> list[str]:
    """Return ``platform`` and every older manylinux tag it runs (pip does not expand them)."""
    prefix, _, rest = platform.partition("manylinux_")
    if prefix or not rest:
        return [platform]
    major, minor, arch = rest.split("_", 2)
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(int(minor), 16, -1)]
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    return tags + [f"{name}_{arch}" for name, since in legacy.items() if int(minor) >= since]


def _run_pip(args: list[str], what: str, echo: Callable[[str], None]) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines()[-5:]:
        echo(f"pip: {line}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ImageBuildError(f"{what} failed (pip exited {proc.returncode})", log_tail=tail)


def _build_scoring_wheel(dst: Path, scoring_version: str, echo: Callable[[str], None]) -> None:
    source = scoring_source_tree()
    if source is None:
        _run_pip(
            ["download", "--no-deps", "--only-binary=:all:", "-d", str(dst),
             f"{SCORING_DISTRIBUTION}=={scoring_version}"],
            "fetching the scoring service wheel", echo,
        )  # fmt: skip
        return
    # Build from a copy: the source tree stays free of build/ and egg-info droppings.
    with tempfile.TemporaryDirectory(prefix="mlops-scoring-src-") as tmp:
        copy = Path(tmp) / "scoring"
        shutil.copytree(
            source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc", "dist")
        )
        _run_pip(["wheel", "--no-deps", "-q", "-w", str(dst), str(copy)], "building the scoring wheel", echo)


def resolve_wheelhouse(
    requirements: tuple[str, ...],
    *,
    scoring_version: str,
    scoring_digest: str,
    python: str = "cp311",
    platform: str = "manylinux_2_36_x86_64",
    cache_root: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = log.info,
) -> Path:
    """Return a folder of wheels that installs the scoring service and ``requirements`` offline.

    The folder holds ``requirements.txt`` (what to install) and every wheel it needs for the
    given interpreter and platform. Cached by content; a cache hit runs no pip at all.

    :param requirements: extra pip requirements of the image.
    :param scoring_version: version of the scoring service to install.
    :param scoring_digest: digest of its source (part of the cache key).
    :param python: interpreter tag, e.g. ``cp311``.
    :param platform: wheel platform tag; older manylinux tags are accepted too.
    :param cache_root: cache folder (default ``$MLOPS_HOME/wheelhouse``).
    :param echo: where progress lines go (the task log).
    :raises ImageBuildError: pip could not resolve or download a dependency.
    """
    root = Path(cache_root) if cache_root else Path(mlops_home()) / "wheelhouse"
    key_doc = {
        "requirements": sorted(requirements),
        "scoring": [scoring_version, scoring_digest],
        "python": python,
        "platform": platform,
    }
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
    house = root / key
    if (house / _COMPLETE).is_file():
        echo(f"Wheelhouse {key} cached ({len(list(house.glob('*.whl')))} wheels)")
        return house
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        extra = list(requirements) or "no extra requirements"
        echo(f"Resolving wheelhouse {key} for {python} {platform}: {extra}")
        _build_scoring_wheel(tmp, scoring_version, echo)
        scoring_wheels = sorted(tmp.glob("*.whl"))
        if not scoring_wheels:
            raise ImageBuildError("no scoring service wheel was produced")
        req_file = tmp / REQUIREMENTS_FILE
        req_file.write_text("\n".join([f"{SCORING_DISTRIBUTION}=={scoring_version}", *requirements]) + "\n")
        version = python.removeprefix("cp")
        platforms = [a for tag in _compatible_platforms(platform) for a in ("--platform", tag)]
        _run_pip(
            [
                "download", "-q", "--only-binary=:all:", "--dest", str(tmp),
                *platforms, "--python-version", f"{version[0]}.{version[1:]}",
                "--implementation", "cp", "--abi", python, "--abi", "abi3", "--abi", "none",
                "--find-links", str(tmp), "-r", str(req_file),
            ],
            "resolving the image's dependencies", echo,
        )  # fmt: skip
        (tmp / _COMPLETE).write_text(json.dumps(key_doc, sort_keys=True))
        try:
            os.replace(tmp, house)
        except OSError:  # another build filled the same key meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    echo(f"Wheelhouse {key} ready ({len(list(house.glob('*.whl')))} wheels)")
    return house
