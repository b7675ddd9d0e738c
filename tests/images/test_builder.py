"""Building scoring images against the real Docker engine and the embedded MLflow registry.

Covers: a cold build, reuse of an unchanged manifest (no second build), rebuilds when a
dependency or the model changes, and what the image is: non-root, one port, a HEALTHCHECK,
OCI labels, and an entry in the registry's usage guard.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from airflow_mlops.exceptions import ImageBuildError, ModelInUseError
from airflow_mlops.hooks.registry import MlflowRegistryHook
from airflow_mlops.images.builder import LABEL_MANIFEST_HASH, LABEL_MODELS, ImageBuilder, image_user

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

REPOSITORY = "airflow-mlops/test-scoring"


@pytest.fixture(scope="module")
def registry() -> MlflowRegistryHook:
    return MlflowRegistryHook()


@pytest.fixture(scope="module")
def model_name(registry: MlflowRegistryHook, digits_model_dir: Path) -> str:
    name = f"digits-img-{uuid.uuid4().hex[:6]}"
    registry.register_model(name, str(digits_model_dir))
    return name


@pytest.fixture(scope="module")
def built(docker_engine: None, registry: MlflowRegistryHook, model_name: str):
    lines: list[str] = []
    builder = ImageBuilder(registry=registry, echo=lines.append)
    result = builder.build_image([f"{model_name}:1"], repository=REPOSITORY)
    yield builder, result, lines
    for tag in {result.image}:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_cold_build_streams_output_and_makes_the_image(built) -> None:
    builder, result, lines = built
    assert not result.reused
    assert result.image == f"{REPOSITORY}:{result.tag}" and len(result.tag) == 16
    assert result.manifest_hash.startswith(f"sha256:{result.tag}")
    assert any(line.startswith("Step ") for line in lines), "build output reaches the log"
    assert builder.image_exists(result.image)
    assert set(result.to_xcom()) == {"image", "tag", "manifest_hash", "reused", "models"}


def test_image_is_non_root_with_one_port_healthcheck_and_labels(built) -> None:
    builder, result, _ = built
    config = builder.client.inspect_image(result.image)["Config"]
    assert config["User"] == "10001:10001"
    assert list(config["ExposedPorts"]) == ["5001/tcp"]
    assert "/health/live" in " ".join(config["Healthcheck"]["Test"])
    labels = config["Labels"]
    assert labels[LABEL_MANIFEST_HASH] == result.manifest_hash
    assert json.loads(labels[LABEL_MODELS]) == result.models
    assert labels["org.opencontainers.image.revision"] == result.manifest_hash
    uid = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "id", result.image, "-u"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert uid == "10001"


def test_unchanged_manifest_reuses_the_image(built, registry: MlflowRegistryHook, model_name: str) -> None:
    builder, first, _ = built
    before = builder.client.inspect_image(first.image)["Id"]
    lines: list[str] = []
    again = ImageBuilder(registry=registry, echo=lines.append).build_image(
        [f"{model_name}:1"], repository=REPOSITORY
    )
    assert again.reused and again.image == first.image
    assert not any(line.startswith("Step ") for line in lines), "no second build"
    assert builder.client.inspect_image(first.image)["Id"] == before


def test_images_are_recorded_on_the_model_version(
    built, registry: MlflowRegistryHook, model_name: str
) -> None:
    _, result, _ = built
    assert image_user(result.image) in registry.users(model_name, "1")
    with pytest.raises(ModelInUseError, match="image:"):
        registry.delete_model_version(model_name, "1")


def test_dependency_change_rebuilds(built, registry: MlflowRegistryHook, model_name: str) -> None:
    _, first, _ = built
    builder = ImageBuilder(registry=registry, echo=lambda _line: None)
    other = builder.build_image([f"{model_name}:1"], requirements=["packaging>=20"], repository=REPOSITORY)
    try:
        assert not other.reused and other.tag != first.tag
        assert other.manifest.requirements == ("packaging>=20",)
    finally:
        registry.release(model_name, "1", image_user(other.image))
        subprocess.run(["docker", "rmi", "-f", other.image], capture_output=True)


def test_model_change_rebuilds(built, registry: MlflowRegistryHook, model_name: str, tmp_path: Path) -> None:
    from airflow_mlops.examples.digits import train_digits_onnx

    _, first, _ = built
    train_digits_onnx(tmp_path, hidden=8, max_iter=20)
    version = registry.register_model(model_name, str(tmp_path))["version"]
    builder = ImageBuilder(registry=registry, echo=lambda _line: None)
    other = builder.build_image([model_name], repository=REPOSITORY)  # "latest"
    try:
        assert not other.reused and other.tag != first.tag
        assert [m["version"] for m in other.models] == [str(version)]
    finally:
        subprocess.run(["docker", "rmi", "-f", other.image], capture_output=True)


def test_unresolvable_dependency_fails_with_pip_output(
    built, registry: MlflowRegistryHook, model_name: str
) -> None:
    builder = ImageBuilder(registry=registry, echo=lambda _line: None)
    with pytest.raises(ImageBuildError, match="No matching distribution") as err:
        builder.build_image(
            [f"{model_name}:1"], requirements=["no-such-package-mlops-xyz==9.9"], repository=REPOSITORY
        )
    assert err.value.log_tail
