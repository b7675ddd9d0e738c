"""What runs: the ``/version`` document, from the image manifest or from the model folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlops_scoring import __version__

__all__ = ["describe_models", "dir_digest", "version_document"]


def dir_digest(folder: Path) -> str:
    """Return ``sha256:<hex>`` over every file's relative name and content, in name order."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def describe_models(model_dir: Path | None) -> list[dict[str, str]]:
    """Discover the models under ``model_dir``.

    Azure ML's layout ``<name>/<version>/...`` gives one entry per version folder; any other
    layout is one model named after the folder, version ``"local"``.
    """
    if model_dir is None:
        return []
    found: list[dict[str, str]] = []
    for name_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [v for v in sorted(name_dir.iterdir()) if v.is_dir() and v.name.isdigit()]
        for v in versions:
            found.append({"name": name_dir.name, "version": v.name, "digest": dir_digest(v)})
    loose = [p for p in model_dir.iterdir() if p.is_file()]
    if found and not loose:
        return found
    return [{"name": model_dir.resolve().name, "version": "local", "digest": dir_digest(model_dir)}]


def version_document(service: str, model_dir: Path | None, manifest: Path | None) -> dict[str, Any]:
    """Return the ``/version`` body: service, models (name, version, digest), manifest hash."""
    manifest_hash: str | None = None
    if manifest is not None:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        manifest_hash = data.get("hash")
        models = [
            {"name": str(m.get("name")), "version": str(m.get("version")), "digest": str(m.get("digest"))}
            for m in data.get("models", [])
        ]
    else:
        models = describe_models(model_dir)
    return {
        "service": {"name": service, "version": __version__},
        "models": models,
        "manifest_hash": manifest_hash,
    }
