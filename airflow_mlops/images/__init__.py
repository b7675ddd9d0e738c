"""Scoring images: a content-addressed manifest, a hermetic wheelhouse, the build through Docker."""

from __future__ import annotations

from airflow_mlops.images.builder import DEFAULT_REPOSITORY, BuildResult, ImageBuilder, base_image_setting
from airflow_mlops.images.manifest import ImageManifest, ModelEntry

__all__ = [
    "DEFAULT_REPOSITORY",
    "BuildResult",
    "ImageBuilder",
    "ImageManifest",
    "ModelEntry",
    "base_image_setting",
]
