"""DeploymentHook with the real embedded MLflow registry and real local scoring processes."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from airflow_mlops.constants import ServiceState, mlops_home
from airflow_mlops.exceptions import (
    ConfigError,
    DeploymentError,
    DeploymentFailed,
    DeploymentNotFound,
    HealthTimeout,
    ModelInUseError,
    UpdateFailed,
)
from airflow_mlops.hooks.deployment import DeploymentHook, parse_model_reference
from airflow_mlops.hooks.registry import MlflowRegistryHook

pytestmark = pytest.mark.timeout(300)

BROKEN_SCRIPT = 'def init():\n    raise RuntimeError("boom: no weights")\n\n\ndef run(raw):\n    return raw\n'


@pytest.fixture(scope="module")
def registry() -> MlflowRegistryHook:
    return MlflowRegistryHook()


@pytest.fixture(scope="module")
def model_name(registry: MlflowRegistryHook, digits_model_dir: Path, tmp_path_factory) -> str:
    """A model with two versions (the second a different file) and alias ``champion`` on v2."""
    from airflow_mlops.examples.digits import train_digits_onnx

    name = f"digits-hook-{uuid.uuid4().hex[:6]}"
    registry.register_model(name, digits_model_dir)
    other = tmp_path_factory.mktemp("digits-v2")
    train_digits_onnx(other, hidden=16, max_iter=50)
    registry.register_model(name, other, aliases=["champion"])
    return name


@pytest.fixture
def hook(tmp_path: Path) -> DeploymentHook:
    return DeploymentHook("local", target_kwargs={"home": str(tmp_path / "local")})


def test_parse_model_reference() -> None:
    assert parse_model_reference("digits:3") == ("digits", "3")
    assert parse_model_reference("digits@champion") == ("digits", "@champion")
    assert parse_model_reference("digits") == ("digits", "latest")
    for bad in ("", ":3", "digits@"):
        with pytest.raises(ConfigError):
            parse_model_reference(bad)


def test_deploy_marks_in_use_update_switches_delete_releases(
    hook: DeploymentHook, registry: MlflowRegistryHook, model_name: str, digits_rows: list[list[float]]
) -> None:
    user = "deployment:local/hook-svc"
    info = hook.deploy_service("hook-svc", [f"{model_name}:1"])
    try:
        assert registry.users(model_name, 1) == [user]
        with pytest.raises(ModelInUseError):
            registry.delete_model_version(model_name, 1)
        assert (
            hook.wait_until_healthy("hook-svc", timeout=60, poll_interval=0.2).state is ServiceState.HEALTHY
        )
        revisions = list((Path(mlops_home()) / "deployments" / "local" / "hook-svc").iterdir())
        assert len(revisions) == 1 and (revisions[0] / "models" / model_name / "1" / "model.onnx").is_file()
        keys = hook.get_keys("hook-svc")
        headers = {"Authorization": f"Bearer {keys.primary_key}"}
        assert (
            httpx.post(info.scoring_uri, json={"data": digits_rows[:2]}, headers=headers).status_code == 200
        )

        updated = hook.update_service("hook-svc", [f"{model_name}@champion"])
        assert updated.url == info.url and hook.get_keys("hook-svc") == keys
        version = httpx.get(f"{info.url}/version", headers=headers).json()
        assert [(m["name"], m["version"]) for m in version["models"]] == [(model_name, "2")]
        assert registry.users(model_name, 1) == [] and registry.users(model_name, 2) == [user]
        assert len(list(revisions[0].parent.iterdir())) == 1 and not revisions[0].exists()
        assert [s.name for s in hook.list_services(model=model_name)] == ["hook-svc"]

        # Models not given are kept: a config-only update still serves v2.
        hook.update_service("hook-svc", config={"max_concurrent_requests": 2})
        assert hook.get_service("hook-svc").details["config"]["max_concurrent_requests"] == 2
        assert registry.users(model_name, 2) == [user]
    finally:
        assert hook.delete_service("hook-svc") is True
    assert registry.users(model_name, 2) == []
    assert not (Path(mlops_home()) / "deployments" / "local" / "hook-svc").exists()
    with pytest.raises(DeploymentNotFound):
        hook.delete_service("hook-svc")
    assert hook.delete_service("hook-svc", missing_ok=True) is False


def test_failed_update_keeps_old_version_and_its_marks(
    hook: DeploymentHook, registry: MlflowRegistryHook, model_name: str, tmp_path: Path
) -> None:
    (tmp_path / "score.py").write_text(BROKEN_SCRIPT)
    hook.deploy_service("hook-keep", [model_name])  # latest = 2
    try:
        hook.wait_until_healthy("hook-keep", timeout=60, poll_interval=0.2)
        with pytest.raises(UpdateFailed, match="previous version still serving") as caught:
            hook.update_service(
                "hook-keep", [f"{model_name}:1"], entry_script="score.py", source_dir=str(tmp_path)
            )
        assert "boom: no weights" in caught.value.log_tail
        assert registry.users(model_name, 1) == []
        assert registry.users(model_name, 2) == ["deployment:local/hook-keep"]
        assert hook.get_service_state("hook-keep").state is ServiceState.HEALTHY
        assert [m["version"] for m in hook.get_service("hook-keep").models] == ["2"]
    finally:
        hook.delete_service("hook-keep")


def test_wait_until_healthy_raises_failed_with_log_tail(
    hook: DeploymentHook, registry: MlflowRegistryHook, model_name: str, tmp_path: Path
) -> None:
    (tmp_path / "score.py").write_text(BROKEN_SCRIPT)
    hook.deploy_service("hook-broken", [f"{model_name}:2"], entry_script="score.py", source_dir=str(tmp_path))
    try:
        with pytest.raises(DeploymentFailed) as caught:
            hook.wait_until_healthy("hook-broken", timeout=60, poll_interval=0.2)
        assert caught.value.state == "Failed" and "boom: no weights" in caught.value.log_tail
    finally:
        hook.delete_service("hook-broken")
    assert registry.users(model_name, 2) == []


def test_wait_until_healthy_times_out(hook: DeploymentHook, model_name: str) -> None:
    hook.deploy_service("hook-slow", [f"{model_name}:2"])
    try:
        with pytest.raises(HealthTimeout, match="hook-slow"):
            hook.wait_until_healthy("hook-slow", timeout=0, poll_interval=0.1)
    finally:
        hook.delete_service("hook-slow")


def test_a_failed_deploy_releases_what_it_marked(
    hook: DeploymentHook, registry: MlflowRegistryHook, model_name: str
) -> None:
    hook.deploy_service("hook-dup", [f"{model_name}:1"])
    try:
        with pytest.raises(DeploymentError, match="already exists"):
            DeploymentHook("local", target_kwargs=hook.target_kwargs).deploy_service(
                "hook-dup", [f"{model_name}:1"]
            )
        # The refused duplicate must not release the running deployment's mark.
        assert registry.users(model_name, 1) == ["deployment:local/hook-dup"]
        assert hook.get_service_state("hook-dup").state is not ServiceState.FAILED
    finally:
        hook.delete_service("hook-dup")
