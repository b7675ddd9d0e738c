"""Build a scoring image (thin: the work is in :class:`~airflow_mlops.images.builder.ImageBuilder`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_mlops.exceptions import ConfigError
from airflow_mlops.images.builder import DEFAULT_REPOSITORY, ImageBuilder

__all__ = ["BuildImageOperator"]


class BuildImageOperator(BaseOperator):
    """Build (or reuse) the content-addressed scoring image of registered model versions.

    The image tag is the hash of the image manifest (models and digests, entry script,
    dependencies, environment, scoring service, base image): an unchanged manifest reuses
    the existing image; anything else builds a new one, offline, from a wheelhouse resolved
    on this worker. Build output goes to the task log. Returns
    ``{"image", "tag", "manifest_hash", "reused", "models"}``.

    :param models: ``"name:version"``, ``"name@alias"`` or ``"name"`` (latest) references (templated).
    :param entry_script: Azure ML-style scoring script, relative to ``source_dir``; ``None``
        serves an ONNX model directly (templated).
    :param source_dir: folder of the entry script and what it imports (templated).
    :param requirements: pip requirements: a list, or a requirements file path (templated).
    :param conda_file: conda environment file whose ``pip:`` section is installed (templated).
    :param inference_config: Azure ML ``inferenceconfig.json`` giving the entry script, source
        directory and conda file (templated).
    :param base_image: base image; default ``$MLOPS_BASE_IMAGE`` or ``python:3.11-slim`` (templated).
    :param environment: environment variables baked into the image (templated).
    :param repository: image repository (templated).
    :param push: push the image to the registry of the Docker connection.
    :param docker_conn_id: Docker connection; ``None`` uses the local engine's environment.
    :param mlflow_conn_id: MLflow registry connection.
    """

    template_fields: Sequence[str] = (
        "models",
        "entry_script",
        "source_dir",
        "requirements",
        "conda_file",
        "inference_config",
        "base_image",
        "environment",
        "repository",
    )
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        models: list[str] | str,
        entry_script: str | None = None,
        source_dir: str | None = None,
        requirements: list[str] | str | None = None,
        conda_file: str | None = None,
        inference_config: str | None = None,
        base_image: str | None = None,
        environment: dict[str, str] | None = None,
        repository: str = DEFAULT_REPOSITORY,
        push: bool = False,
        docker_conn_id: str | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not models:
            raise ConfigError(f"{self.task_id}: give at least one model")
        self.models = models
        self.entry_script = entry_script
        self.source_dir = source_dir
        self.requirements = requirements
        self.conda_file = conda_file
        self.inference_config = inference_config
        self.base_image = base_image
        self.environment = environment
        self.repository = repository
        self.push = push
        self.docker_conn_id = docker_conn_id
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        builder = ImageBuilder(
            docker_conn_id=self.docker_conn_id, mlflow_conn_id=self.mlflow_conn_id, echo=self.log.info
        )
        result = builder.build_image(
            [self.models] if isinstance(self.models, str) else list(self.models),
            entry_script=self.entry_script or None,
            source_dir=self.source_dir or None,
            requirements=self.requirements or None,
            conda_file=self.conda_file or None,
            inference_config=self.inference_config or None,
            base_image=self.base_image or None,
            environment=dict(self.environment or {}),
            repository=self.repository,
            push=self.push,
        )
        self.log.info(
            "%s %s (manifest %s)", "Reused" if result.reused else "Built", result.image, result.manifest_hash
        )
        return result.to_xcom()
