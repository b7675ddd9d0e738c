"""The image manifest: canonical hash, and the dependency shapes Azure ML users bring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_mlops.exceptions import ConfigError
from airflow_mlops.images.context import render_dockerfile
from airflow_mlops.images.manifest import (
    ImageManifest,
    ModelEntry,
    folder_digest,
    pip_requirements_from_conda,
    read_inference_config,
    read_requirements,
)

MODEL = ModelEntry("digits", "1", "sha256:" + "a" * 64)


def _manifest(**kw) -> ImageManifest:
    base = dict(models=(MODEL,), base_image="b:1", scoring_version="0.1.0", scoring_digest="sha256:x")
    base.update(kw)
    return ImageManifest(**base)


def test_hash_is_canonical_and_changes_with_every_input() -> None:
    m = _manifest(requirements=("scikit-learn==1.6",))
    assert m.hash == _manifest(requirements=("scikit-learn==1.6",)).hash
    assert m.hash.startswith("sha256:") and m.tag == m.hash[7:23]
    assert m.image("repo/x") == f"repo/x:{m.tag}"
    others = [
        _manifest(),
        _manifest(requirements=("scikit-learn==1.7",)),
        _manifest(models=(ModelEntry("digits", "2", MODEL.digest),)),
        _manifest(models=(ModelEntry("digits", "1", "sha256:" + "b" * 64),)),
        _manifest(base_image="b:2"),
        _manifest(scoring_digest="sha256:y"),
        _manifest(environment=(("A", "1"),)),
        _manifest(entry_script="score.py", source_digest="sha256:s"),
    ]
    assert len({m.hash, *(o.hash for o in others)}) == len(others) + 1
    assert json.loads(m.canonical_json())["requirements"] == ["scikit-learn==1.6"]
    with pytest.raises(ConfigError):
        _manifest(models=())


def test_requirements_list_and_file(tmp_path: Path) -> None:
    assert read_requirements(["b>=1", "a", "a"]) == ("a", "b>=1")
    req = tmp_path / "requirements.txt"
    req.write_text("# deps\nnumpy>=1.26  # pinned below\n\nscipy\n")
    assert read_requirements(str(req)) == ("numpy>=1.26", "scipy")
    with pytest.raises(ConfigError, match="pip options"):
        read_requirements(["--index-url http://x"])


def test_conda_pip_section_drops_azureml_serving_stack(tmp_path: Path) -> None:
    conda = tmp_path / "env.yml"
    conda.write_text(
        "name: project_environment\ndependencies:\n  - python=3.11\n  - pip\n  - scikit-learn\n"
        "  - pip:\n    - azureml-defaults\n    - inference-schema[numpy-support]\n    - joblib==1.4\n"
    )
    assert pip_requirements_from_conda(conda) == ("inference-schema[numpy-support]", "joblib==1.4")


def test_inference_config_paths_resolve_against_its_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    (tmp_path / "env.yml").write_text("dependencies:\n  - pip:\n    - joblib\n")
    (tmp_path / "inferenceconfig.json").write_text(
        json.dumps(
            {"entryScript": "score.py", "sourceDirectory": "src", "condaFile": "env.yml", "runtime": "python"}
        )
    )
    ic = read_inference_config(tmp_path / "inferenceconfig.json")
    assert ic.entry_script == "score.py"
    assert ic.source_dir == str(src.resolve())
    assert ic.conda_file == str((tmp_path / "env.yml").resolve())


def test_folder_digest_ignores_caches(tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text("x = 1\n")
    before = folder_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "score.cpython-311.pyc").write_bytes(b"\0")
    assert folder_digest(tmp_path) == before
    (tmp_path / "score.py").write_text("x = 2\n")
    assert folder_digest(tmp_path) != before


def test_dockerfile_is_non_root_with_healthcheck_and_offline_install() -> None:
    text = render_dockerfile(_manifest(entry_script="score.py", source_digest="sha256:s"))
    assert "USER 10001:10001" in text
    assert "HEALTHCHECK" in text and "/health/live" in text
    assert "--no-index --find-links /tmp/wheels" in text
    assert text.count("EXPOSE") == 1 and "EXPOSE 5001" in text
    assert 'MLOPS_ENTRY_SCRIPT="/var/mlops/src/score.py"' in text
    assert 'ENTRYPOINT ["/opt/mlops/venv/bin/mlops-serve", "--host", "0.0.0.0"]' in text
