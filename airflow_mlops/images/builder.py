"""Build scoring images: manifest, reuse by content hash, offline build, registry bookkeeping.

:class:`ImageBuilder.build_image` downloads the model versions (for their digests), writes
the :class:`~airflow_mlops.images.manifest.ImageManifest`, and returns at once when an
image tagged with the manifest's hash exists (``reused``). Otherwise it resolves the
wheelhouse on this host, fills a build context and builds through the Docker API, streaming
each line of build output to ``echo`` (the task log). Either way it records
``image:<repository>:<tag>`` as a user of every model version it holds, so
``search_model_versions(tags=...)`` finds a model's images and the registry refuses to
delete a version an image still contains.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow_mlops.constants import DEFAULT_BASE_IMAGE, LABEL_PREFIX, mlops_home
from airflow_mlops.exceptions import ConfigError, ImageBuildError
from airflow_mlops.images.client import docker_client, registry_of
from airflow_mlops.images.context import prepare_context
from airflow_mlops.images.manifest import (
    ImageManifest,
    ModelEntry,
    folder_digest,
    pip_requirements_from_conda,
    read_inference_config,
    read_requirements,
    scoring_source_digest,
)
from airflow_mlops.images.wheelhouse import resolve_wheelhouse

__all__ = [
    "DEFAULT_REPOSITORY",
    "LABEL_MANIFEST_HASH",
    "LABEL_MODELS",
    "BuildResult",
    "ImageBuilder",
    "base_image_setting",
    "image_user",
]

log = logging.getLogger(__name__)

DEFAULT_REPOSITORY = "airflow-mlops/scoring"
#: Image labels (OCI style, dotted) that carry what the image holds.
LABEL_MODELS = f"{LABEL_PREFIX}.models"
LABEL_MANIFEST_HASH = f"{LABEL_PREFIX}.manifest-hash"
_LOG_TAIL = 40


def base_image_setting(base_image: str | None = None) -> str:
    """Return the base image: the argument, else ``$MLOPS_BASE_IMAGE``, else ``python:3.11-slim``."""
    return base_image or os.environ.get("MLOPS_BASE_IMAGE") or DEFAULT_BASE_IMAGE


def image_user(image: str) -> str:
    """Return the registry usage tag value of an image (``image:<repository>:<tag>``)."""
    return f"image:{image}"


@dataclass
class BuildResult:
    """What :meth:`ImageBuilder.build_image` made (or found)."""

    image: str
    tag: str
    manifest_hash: str
    reused: bool
    models: list[dict[str, str]]
    manifest: ImageManifest
    pushed: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_xcom(self) -> dict[str, Any]:
        """Return the small JSON-able result an operator pushes to XCom."""
        data = {
            "image": self.image,
            "tag": self.tag,
            "manifest_hash": self.manifest_hash,
            "reused": self.reused,
            "models": self.models,
        }
        if self.pushed:
            data["pushed"] = self.pushed
        return data


class ImageBuilder:
    """Build content-addressed scoring images through the Docker API.

    :param client: a ``docker.APIClient`` (tests inject one); default from ``docker_conn_id``.
    :param docker_conn_id: Airflow Docker connection (engine client + registry for pushes);
        ``None`` uses the environment.
    :param registry: an ``MlflowRegistryHook`` (tests inject one).
    :param mlflow_conn_id: the registry connection when ``registry`` is not given.
    :param wheelhouse_root: wheelhouse cache (default ``$MLOPS_HOME/wheelhouse``).
    :param echo: where progress and build output lines go (the task log).
    """

    def __init__(
        self,
        *,
        client: Any | None = None,
        docker_conn_id: str | None = None,
        registry: Any | None = None,
        mlflow_conn_id: str = "mlflow_default",
        wheelhouse_root: str | os.PathLike[str] | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self.docker_conn_id = docker_conn_id
        self._registry = registry
        self.mlflow_conn_id = mlflow_conn_id
        self.wheelhouse_root = wheelhouse_root
        self.echo = echo or log.info

    @cached_property
    def client(self) -> Any:
        """Return the Docker API client (built on first use)."""
        return self._client if self._client is not None else docker_client(self.docker_conn_id)

    @cached_property
    def registry(self) -> Any:
        """Return the model registry hook (built on first use)."""
        if self._registry is not None:
            return self._registry
        from airflow_mlops.hooks.registry import MlflowRegistryHook

        return MlflowRegistryHook(mlflow_conn_id=self.mlflow_conn_id)

    # -- inputs ------------------------------------------------------------------------------

    @staticmethod
    def _entry(
        entry_script: str | None,
        source_dir: str | None,
        conda_file: str | None,
        inference_config: str | None,
    ) -> tuple[str | None, Path | None, str | None]:
        if inference_config:
            ic = read_inference_config(inference_config)
            entry_script = entry_script or ic.entry_script
            source_dir = source_dir or ic.source_dir
            conda_file = conda_file or ic.conda_file
        if not entry_script:
            if source_dir:
                raise ConfigError("source_dir was given without an entry_script")
            return None, None, conda_file
        source = Path(source_dir) if source_dir else Path(entry_script).resolve().parent
        if not source_dir:
            entry_script = Path(entry_script).name
        if not (source / entry_script).is_file():
            raise ConfigError(f"entry script {entry_script!r} not found in {source}")
        return Path(entry_script).as_posix(), source.resolve(), conda_file

    def _download_models(self, models: list[str] | str, dst: Path) -> list[ModelEntry]:
        from airflow_mlops.hooks.deployment import parse_model_reference

        if isinstance(models, str):
            models = [models]
        if not models:
            raise ConfigError("an image needs at least one model")
        entries = []
        for reference in models:
            name, ref = parse_model_reference(reference)
            version = str(self.registry.resolve_version(name, ref))
            folder = dst / name / version
            if folder.exists():
                raise ConfigError(f"model {name} version {version} is listed twice")
            model = self.registry.download_model(name, version, str(folder))
            entries.append(ModelEntry(model.name, str(model.version), model.digest))
        return sorted(entries, key=lambda m: (m.name, m.version))

    # -- docker ------------------------------------------------------------------------------

    def image_exists(self, image: str) -> bool:
        """Tell whether the engine has an image with this reference."""
        import docker.errors

        try:
            self.client.inspect_image(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    def _labels(self, manifest: ImageManifest) -> dict[str, str]:
        return {
            "org.opencontainers.image.title": "airflow-mlops scoring service",
            "org.opencontainers.image.description": "Scores "
            + ", ".join(f"{m.name}:{m.version}" for m in manifest.models),
            "org.opencontainers.image.version": manifest.scoring_version,
            "org.opencontainers.image.revision": manifest.hash,
            "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
            "org.opencontainers.image.base.name": manifest.base_image,
            "org.opencontainers.image.vendor": "airflow-mlops",
            LABEL_MODELS: manifest.models_label(),
            LABEL_MANIFEST_HASH: manifest.hash,
        }

    def _docker_build(self, context: Path, image: str, labels: dict[str, str]) -> str:
        import docker.errors

        tail: deque[str] = deque(maxlen=_LOG_TAIL)
        image_id = ""
        last_layer, stages = "", []
        try:
            stream = self.client.build(
                path=str(context), tag=image, rm=True, forcerm=True, pull=False, decode=True, labels=labels
            )
            for chunk in stream:
                if "error" in chunk:
                    tail.append(str(chunk["error"]).rstrip())
                    raise ImageBuildError(f"docker build of {image} failed: {chunk['error']}".rstrip(),
                                          log_tail="\n".join(tail))  # fmt: skip
                if "aux" in chunk and isinstance(chunk["aux"], dict):
                    image_id = chunk["aux"].get("ID", image_id)
                for line in str(chunk.get("stream", "")).splitlines():
                    if line.startswith(" ---> ") and len(line.split()) == 2:
                        last_layer = line.split()[1]
                    elif line.startswith("Step ") and " : FROM " in line and last_layer:
                        stages.append(last_layer)  # the previous stage's final image
                    if line.strip():
                        tail.append(line)
                        self.echo(line)
        except docker.errors.APIError as e:
            raise ImageBuildError(f"docker build of {image} failed: {e}", log_tail="\n".join(tail)) from e
        if not self.image_exists(image):
            raise ImageBuildError(f"docker build of {image} produced no image", log_tail="\n".join(tail))
        # The classic builder keeps each earlier stage (wheels and all) as a dangling image.
        for stage in stages:
            with contextlib.suppress(docker.errors.APIError):
                self.client.remove_image(stage)
        return image_id

    def _push(self, image: str, repository: str, tag: str) -> str:
        registry = registry_of(self.docker_conn_id)
        if not registry:
            raise ConfigError("push=True needs a registry: set the host of the Docker connection")
        remote = f"{registry}/{repository}"
        self.client.tag(image, remote, tag=tag)
        self.echo(f"Pushing {remote}:{tag}")
        for chunk in self.client.push(remote, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise ImageBuildError(f"push of {remote}:{tag} failed: {chunk['error']}")
        return f"{remote}:{tag}"

    # -- the build ---------------------------------------------------------------------------

    def build_image(
        self,
        models: list[str] | str,
        *,
        entry_script: str | None = None,
        source_dir: str | None = None,
        requirements: list[str] | str | None = None,
        conda_file: str | None = None,
        inference_config: str | None = None,
        base_image: str | None = None,
        environment: dict[str, str] | None = None,
        repository: str = DEFAULT_REPOSITORY,
        push: bool = False,
    ) -> BuildResult:
        """Build (or reuse) the scoring image of ``models``; record it on the model versions.

        :param models: model references: ``"name:version"``, ``"name@alias"`` or ``"name"``.
        :param entry_script: Azure ML-style scoring script, relative to ``source_dir``.
        :param source_dir: folder of the entry script and what it imports.
        :param requirements: pip requirements: a list, or the path of a requirements file.
        :param conda_file: a conda environment file whose ``pip:`` section is installed.
        :param inference_config: an Azure ML ``inferenceconfig.json`` (entry script, source
            directory, conda file).
        :param base_image: base image (default ``$MLOPS_BASE_IMAGE`` or ``python:3.11-slim``).
        :param environment: environment variables baked into the image.
        :param repository: image repository; the tag is the manifest hash.
        :param push: push to the registry of the Docker connection.
        :raises ImageBuildError: dependencies could not be resolved or the build failed.
        """
        entry, source, conda_file = self._entry(entry_script, source_dir, conda_file, inference_config)
        reqs = read_requirements(requirements)
        if conda_file:
            reqs = tuple(sorted(set(reqs) | set(pip_requirements_from_conda(conda_file))))
        scoring_version, scoring_digest = scoring_source_digest()
        build_root = Path(mlops_home()) / "build"
        build_root.mkdir(parents=True, exist_ok=True)
        context = Path(tempfile.mkdtemp(prefix="context-", dir=build_root))
        try:
            entries = self._download_models(models, context / "models")
            manifest = ImageManifest(
                models=tuple(entries),
                base_image=base_image_setting(base_image),
                scoring_version=scoring_version,
                scoring_digest=scoring_digest,
                requirements=reqs,
                entry_script=entry,
                source_digest=folder_digest(source) if source else None,
                environment=tuple(sorted((str(k), str(v)) for k, v in (environment or {}).items())),
            )
            image = manifest.image(repository)
            self.echo(f"Image manifest {manifest.hash}: {json.dumps(manifest.to_dict(), sort_keys=True)}")
            reused = self.image_exists(image)
            if reused:
                self.echo(f"Image {image} exists: reusing it (nothing in its manifest changed)")
            else:
                wheelhouse = resolve_wheelhouse(
                    manifest.requirements,
                    scoring_version=scoring_version,
                    scoring_digest=scoring_digest,
                    python=manifest.python,
                    platform=manifest.platform,
                    cache_root=self.wheelhouse_root,
                    echo=self.echo,
                )
                prepare_context(
                    context, manifest, models_dir=context / "models", wheelhouse=wheelhouse, source_dir=source
                )
                self.echo(f"Building {image} from {manifest.base_image}")
                self._docker_build(context, image, self._labels(manifest))
                self.echo(f"Built {image}")
        finally:
            shutil.rmtree(context, ignore_errors=True)
        for entry_ in manifest.models:
            self.registry.mark_in_use(entry_.name, entry_.version, image_user(image))
        pushed = self._push(image, repository, manifest.tag) if push else None
        return BuildResult(
            image=image,
            tag=manifest.tag,
            manifest_hash=manifest.hash,
            reused=reused,
            models=[{"name": m.name, "version": m.version, "digest": m.digest} for m in manifest.models],
            manifest=manifest,
            pushed=pushed,
        )

    def inspect(self, image: str) -> dict[str, Any]:
        """Return an image's manifest hash, models and size from its labels."""
        data = self.client.inspect_image(image)
        labels = (data.get("Config") or {}).get("Labels") or {}
        return {
            "image": image,
            "id": data.get("Id"),
            "size": data.get("Size"),
            "manifest_hash": labels.get(LABEL_MANIFEST_HASH),
            "models": json.loads(labels.get(LABEL_MODELS) or "[]"),
            "user": (data.get("Config") or {}).get("User"),
        }
