"""The image manifest: everything a scoring image is made of, hashed into its tag.

A manifest names the model versions (with their artifact digests), the scoring entry (the
ONNX default, or an entry script and a digest of its source folder), the Python
dependencies, the environment, the scoring service's version and source digest, the base
image and the Python the wheelhouse is resolved for. Its canonical JSON (sorted keys, no
whitespace) is hashed with SHA-256; the image tag is the first 16 hex digits. Two builds of
the same manifest are the same image, so an existing tag is reused instead of rebuilt, and
any change (a dependency, a model version, one byte of the entry script's folder or of the
scoring service) gives a new tag.

Dependencies come in the shapes Azure ML users have: a pip requirements list or file, the
``pip:`` section of a conda environment file, or an ``inferenceconfig.json`` naming the
entry script, its source directory and its conda file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_mlops.exceptions import ConfigError

__all__ = [
    "IGNORED_AZUREML_PACKAGES",
    "ImageManifest",
    "InferenceConfig",
    "ModelEntry",
    "folder_digest",
    "pip_requirements_from_conda",
    "read_inference_config",
    "read_requirements",
    "scoring_source_digest",
]

log = logging.getLogger(__name__)

#: Azure ML's own serving stack, which our scoring service replaces; dropped from conda specs.
IGNORED_AZUREML_PACKAGES = frozenset({"azureml-defaults", "azureml-inference-server-http"})

#: Files that never belong to an image's content (caches, editor and VCS droppings).
_SKIP_PARTS = frozenset({"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache", ".mypy_cache"})


def _skipped(rel: Path) -> bool:
    return any(part in _SKIP_PARTS for part in rel.parts) or rel.suffix in (".pyc", ".pyo")


def folder_digest(path: str | os.PathLike[str]) -> str:
    """Return ``sha256:<hex>`` over a folder's files: relative names and contents, in name order.

    Caches (``__pycache__``, ``*.pyc``) and VCS folders are left out, so running the code does
    not change its digest.
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder")
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root)
        if _skipped(rel):
            continue
        digest.update(rel.as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return f"sha256:{digest.hexdigest()}"


def scoring_source_digest() -> tuple[str, str]:
    """Return ``(version, digest)`` of the installed scoring service (``mlops_scoring``)."""
    import mlops_scoring

    return mlops_scoring.__version__, folder_digest(Path(mlops_scoring.__file__).parent)


def read_requirements(requirements: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """Normalise pip requirements: a list of specifiers, or the path of a requirements file.

    Comments, blank lines and pip options (``-r``, ``--index-url``…) are refused or dropped:
    index settings belong to the build host, not to the image's identity.
    """
    if requirements is None:
        return ()
    if isinstance(requirements, str):
        path = Path(requirements)
        if not path.is_file():
            raise ConfigError(f"requirements file {requirements!r} does not exist")
        lines = path.read_text().splitlines()
    else:
        lines = [str(r) for r in requirements]
    out: list[str] = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise ConfigError(
                f"requirement {line!r}: pip options are not part of an image; "
                "set index options on the build host (pip.conf / PIP_* variables)"
            )
        out.append(line)
    return tuple(sorted(dict.fromkeys(out)))


def pip_requirements_from_conda(conda_file: str | os.PathLike[str]) -> tuple[str, ...]:
    """Return the ``pip:`` section of a conda environment file (Azure ML's ``condaFile``).

    Conda packages other than ``python`` and ``pip`` cannot be installed from a wheelhouse;
    they are logged and left out, as are Azure ML's serving packages (the scoring service
    replaces them).
    """
    import yaml

    path = Path(conda_file)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read conda file {path}: {e}") from e
    pip: list[str] = []
    skipped: list[str] = []
    for dep in spec.get("dependencies") or []:
        if isinstance(dep, dict):
            pip.extend(str(p) for p in dep.get("pip") or [])
        elif str(dep).split("=")[0].split("<")[0].split(">")[0].strip() not in ("python", "pip"):
            skipped.append(str(dep))
    if skipped:
        log.warning("Conda packages %s are not installed in the image; list them under pip:", skipped)
    kept = []
    for req in pip:
        name = req.split("[")[0].split("=")[0].split("<")[0].split(">")[0].split("~")[0].strip().lower()
        if name in IGNORED_AZUREML_PACKAGES:
            log.info("Leaving out %s: the scoring service replaces Azure ML's serving stack", req)
            continue
        kept.append(req)
    return read_requirements(kept)


@dataclass(frozen=True)
class InferenceConfig:
    """The parts of Azure ML's ``inferenceconfig.json`` an image uses (paths made absolute)."""

    entry_script: str | None
    source_dir: str | None
    conda_file: str | None


def read_inference_config(path: str | os.PathLike[str]) -> InferenceConfig:
    """Read ``entryScript``, ``sourceDirectory`` and ``condaFile`` from an ``inferenceconfig.json``.

    Relative paths are resolved against the file's folder; the entry script stays relative to
    the source directory when one is given (Azure ML's rule).
    """
    file = Path(path)
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read inference config {file}: {e}") from e
    base = file.parent

    def _abs(value: str | None) -> str | None:
        return str((base / value).resolve()) if value else None

    source_dir = _abs(doc.get("sourceDirectory") or doc.get("source_directory"))
    entry = doc.get("entryScript") or doc.get("entry_script")
    if entry and not source_dir:
        entry_path = (base / entry).resolve()
        source_dir, entry = str(entry_path.parent), entry_path.name
    conda = doc.get("condaFile") or doc.get("conda_file")
    if conda and source_dir and not (base / conda).exists() and (Path(source_dir) / conda).exists():
        conda_path: str | None = str((Path(source_dir) / conda).resolve())
    else:
        conda_path = _abs(conda)
    return InferenceConfig(entry_script=entry, source_dir=source_dir, conda_file=conda_path)


@dataclass(frozen=True)
class ModelEntry:
    """One model version inside an image."""

    name: str
    version: str
    digest: str


@dataclass(frozen=True)
class ImageManifest:
    """What a scoring image contains; its hash is the image's identity.

    :param models: model versions with their artifact digests, in name order.
    :param base_image: image the scoring image starts from.
    :param scoring_version: ``mlops_scoring.__version__``.
    :param scoring_digest: digest of the scoring package's source (a code change rebuilds).
    :param requirements: extra pip requirements, sorted.
    :param entry_script: entry script path relative to the source folder; ``None`` serves ONNX.
    :param source_digest: digest of the entry script's source folder.
    :param environment: environment variables baked into the image, sorted by name.
    :param python: the interpreter the wheelhouse is resolved for (``cp311``).
    :param platform: the wheel platform (``manylinux_2_36_x86_64``).
    """

    models: tuple[ModelEntry, ...]
    base_image: str
    scoring_version: str
    scoring_digest: str
    requirements: tuple[str, ...] = ()
    entry_script: str | None = None
    source_digest: str | None = None
    environment: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    python: str = "cp311"
    platform: str = "manylinux_2_36_x86_64"

    #: Bumped when the image layout changes, so old tags are not reused for a new layout.
    FORMAT = 1

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("an image needs at least one model")
        if self.entry_script and not self.source_digest:
            raise ConfigError("an entry script needs its source folder's digest")

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as plain JSON-able data."""
        data = asdict(self)
        data["models"] = [asdict(m) for m in self.models]
        data["environment"] = dict(self.environment)
        data["requirements"] = list(self.requirements)
        data["format"] = self.FORMAT
        return data

    def canonical_json(self) -> bytes:
        """Return the canonical JSON the hash is computed over."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def hash(self) -> str:
        """Return ``sha256:<hex>`` of the canonical JSON."""
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()

    @property
    def tag(self) -> str:
        """Return the image tag: the first 16 hex digits of the hash."""
        return self.hash.split(":", 1)[1][:16]

    def image(self, repository: str) -> str:
        """Return ``<repository>:<tag>``."""
        return f"{repository}:{self.tag}"

    def service_manifest(self) -> dict[str, Any]:
        """Return what the scoring service reports on ``GET /version`` (``--manifest`` file)."""
        return {"hash": self.hash, "models": [asdict(m) for m in self.models]}

    def models_label(self) -> str:
        """Return the models as compact JSON (the ``io.airflow-mlops.models`` label)."""
        return json.dumps([asdict(m) for m in self.models], separators=(",", ":"))
