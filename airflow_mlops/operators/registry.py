"""Register a model version from a task."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_mlops.hooks.registry import MlflowRegistryHook

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["RegisterModelOperator"]


class RegisterModelOperator(BaseOperator):
    """Copy a model into the MLflow registry as the next version of ``name``.

    Returns ``{"name", "version", "uri"}`` (pushed to XCom), e.g. for ``BuildImageOperator``.

    :param name: registered model name. (templated)
    :param source: local file or folder, ``runs:/…`` or ``models:/…`` URI. (templated)
    :param description: version description. (templated)
    :param tags: version tags. (templated)
    :param aliases: aliases to point at the new version. (templated)
    :param baseline: JSON-able training-data profile stored with the version, e.g. pulled from
        an upstream task's XCom; JSON text is parsed. (templated)
    :param mlflow_conn_id: MLflow connection; without one, the embedded registry is used.
    """

    template_fields: Sequence[str] = ("name", "source", "description", "tags", "aliases", "baseline")
    ui_color = "#d5e8f7"

    def __init__(
        self,
        *,
        name: str,
        source: str,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        aliases: list[str] | None = None,
        baseline: dict[str, Any] | str | None = None,
        mlflow_conn_id: str = MlflowRegistryHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not mlflow_conn_id:
            raise ValueError("mlflow_conn_id must not be empty")
        self.name = name
        self.source = source
        self.description = description
        self.tags = tags
        self.aliases = aliases
        self.baseline = baseline
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Context) -> dict[str, str]:
        if not self.name or not self.source:
            raise ValueError(f"name and source are required (got name={self.name!r}, source={self.source!r})")
        if isinstance(self.aliases, str):  # a single alias, or one rendered from a template
            self.aliases = [self.aliases]
        baseline = self.baseline
        if isinstance(baseline, str):  # a template renders to text unless the DAG renders native objects
            baseline = json.loads(baseline) if baseline.strip() else None
        hook = MlflowRegistryHook(mlflow_conn_id=self.mlflow_conn_id)
        registered = hook.register_model(
            self.name,
            self.source,
            description=self.description,
            tags=self.tags,
            aliases=self.aliases,
            baseline=baseline,
        )
        return {key: registered[key] for key in ("name", "version", "uri")}
