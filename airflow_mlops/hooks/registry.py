"""The MLflow Model Registry, as an Airflow hook.

Connection ``mlflow_default`` (type ``mlflow``): *host* is the tracking URI, *login* and
*password* give basic auth, extras ``registry_uri``, ``token`` (bearer) and ``insecure_tls``.
With no such connection the hook uses the **embedded default**: a SQLite registry at
``$MLOPS_HOME/mlflow.db`` and artifacts under ``$MLOPS_HOME/mlartifacts``.

Every registration copies the model files into the registry (an MLflow 3 *logged model* in
the ``airflow-mlops`` experiment, recorded by a short registration run), so a version is
immutable whatever its source was. The training-data baseline, when given, is kept beside the
files as ``_mlops/baseline.json`` and never downloaded with the model.

Credentials never reach ``os.environ``: MLflow reads auth from the environment by default,
so the hook registers a request-header provider (MLflow's plugin API) that adds the
connection's ``Authorization`` header only to requests made inside the hook's own calls (a
context variable, carried into MLflow's artifact thread pool). ``insecure_tls`` is the one
setting MLflow takes from the environment alone; see :meth:`MlflowRegistryHook.settings`.
"""

from __future__ import annotations

import base64
import contextvars
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_mlops.constants import TAG_DEPLOYMENT_PREFIX, TAG_IMAGE_PREFIX, mlops_home
from airflow_mlops.exceptions import ConfigError, ModelInUseError, ModelNotFound, RegistryError
from airflow_mlops.targets.base import ModelRef

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

__all__ = ["EXPERIMENT_NAME", "MlflowRegistryHook", "RegistrySettings", "folder_digest"]

log = logging.getLogger(__name__)

#: Experiment that holds the logged models (and registration runs) the hook creates.
EXPERIMENT_NAME = "airflow-mlops"
#: Artifact folder, inside a logged model, for what travels with a version but is not the model.
_SIDECAR_DIR = "_mlops"
_BASELINE_PATH = f"{_SIDECAR_DIR}/baseline.json"
_USER_KINDS = {"deployment": TAG_DEPLOYMENT_PREFIX, "image": TAG_IMAGE_PREFIX}
_SAFE_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.\-/]")
_RETRYABLE = ("database is locked", "unique constraint", "duplicate key", "already exists")
_T = TypeVar("_T")


def folder_digest(path: str | os.PathLike[str]) -> str:
    """Return ``sha256:<hex>`` over a folder's files: sorted relative paths and their contents.

    :param path: the folder (a single file is hashed as if it were a folder holding it).
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        rel = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + str(file.stat().st_size).encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


# --- credentials without os.environ ---------------------------------------------------------

_AUTH_HEADERS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "airflow_mlops_mlflow_auth", default=None
)
_provider_lock = threading.Lock()
_provider_installed = False


def _install_header_provider() -> None:
    """Register, once per process, the provider that adds a hook's auth header to its requests."""
    global _provider_installed
    with _provider_lock:
        if _provider_installed:
            return
        from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider
        from mlflow.tracking.request_header.registry import _request_header_provider_registry

        class _ConnectionAuthHeaderProvider(RequestHeaderProvider):
            """Adds the current hook's ``Authorization`` header; inactive outside hook calls."""

            def in_context(self) -> bool:
                return _AUTH_HEADERS.get() is not None

            def request_headers(self) -> dict[str, str]:
                return dict(_AUTH_HEADERS.get() or {})

        _request_header_provider_registry.register(_ConnectionAuthHeaderProvider)
        _provider_installed = True


class _ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose tasks run in the submitter's context (so they carry the auth header)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)


@dataclass(frozen=True)
class RegistrySettings:
    """Where the registry is and how to reach it (built from the Airflow connection).

    :param tracking_uri: MLflow tracking URI.
    :param registry_uri: MLflow registry URI (defaults to the tracking URI).
    :param embedded: whether this is the embedded SQLite default.
    :param artifact_root: artifact folder of the embedded default.
    :param headers: HTTP headers carrying the connection's credentials (never logged).
    :param insecure_tls: skip TLS verification (see the hook's docstring).
    """

    tracking_uri: str
    registry_uri: str
    embedded: bool = False
    artifact_root: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    insecure_tls: bool = False


class MlflowRegistryHook(BaseHook):
    """Register, find, download and guard model versions in an MLflow Model Registry.

    :param mlflow_conn_id: Airflow connection to the MLflow tracking server; if it does not
        exist, the embedded SQLite registry under ``$MLOPS_HOME`` is used.
    :param client: an ``MlflowClient`` to use instead of building one (tests, notebooks).
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow Model Registry"

    def __init__(
        self, mlflow_conn_id: str = default_conn_name, *, client: MlflowClient | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        if client is not None:
            self.__dict__["client"] = client
            self.__dict__["settings"] = RegistrySettings(
                tracking_uri=client.tracking_uri, registry_uri=client._registry_uri or client.tracking_uri
            )

    # --- connection form ------------------------------------------------------------------

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Return the extra fields of the connection form (Airflow < 3.2 UI; newer read provider info)."""
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, PasswordField, StringField

        return {
            "registry_uri": StringField(lazy_gettext("Registry URI (optional)"), widget=BS3TextFieldWidget()),
            "token": PasswordField(lazy_gettext("Bearer token (optional)"), widget=BS3PasswordFieldWidget()),
            "insecure_tls": BooleanField(lazy_gettext("Skip TLS verification")),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return how the standard connection fields are labelled and which are hidden."""
        return {
            "hidden_fields": ["schema", "port"],
            "relabeling": {
                "host": "Tracking URI",
                "login": "Username (basic auth, optional)",
                "password": "Password (basic auth, optional)",
            },
            "placeholders": {"host": "http://mlflow.example:5000"},
        }

    # --- client -----------------------------------------------------------------------------

    @cached_property
    def settings(self) -> RegistrySettings:
        """Resolve the connection, or the embedded default when there is none.

        ``insecure_tls`` only takes effect when ``MLFLOW_TRACKING_INSECURE_TLS=true`` is set in the
        worker's environment: MLflow reads TLS verification from there alone, and the hook does
        not change the process environment. It logs a warning when the two disagree.
        """
        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException:
            home = Path(mlops_home())
            artifacts = home / "mlartifacts"
            uri = f"sqlite:///{home / 'mlflow.db'}"
            log.info("MLflow registry: embedded default %s (no connection %r)", uri, self.mlflow_conn_id)
            return RegistrySettings(uri, uri, embedded=True, artifact_root=str(artifacts))
        extra = conn.extra_dejson
        host = (conn.host or "").strip()
        if not host:
            raise ConfigError(f"connection {self.mlflow_conn_id!r} has no host (the MLflow tracking URI)")
        if "://" not in host:
            host = f"http://{host}" + (f":{conn.port}" if conn.port else "")
        headers: dict[str, str] = {}
        if conn.login:
            basic = base64.b64encode(f"{conn.login}:{conn.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        elif extra.get("token"):
            headers["Authorization"] = f"Bearer {extra['token']}"
        insecure = str(extra.get("insecure_tls", "")).lower() in ("1", "true", "yes", "on")
        if insecure and os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true":
            log.warning(
                "connection %r asks for insecure_tls, which MLflow only reads from the environment: "
                "set MLFLOW_TRACKING_INSECURE_TLS=true for the worker",
                self.mlflow_conn_id,
            )
        registry_uri = extra.get("registry_uri") or host
        log.info("MLflow registry: %s (connection %r)", registry_uri, self.mlflow_conn_id)
        return RegistrySettings(host, registry_uri, headers=headers, insecure_tls=insecure)

    @cached_property
    def client(self) -> MlflowClient:
        """Build the ``MlflowClient`` (creating the embedded registry on first use)."""
        from mlflow import MlflowClient

        settings = self.settings
        if settings.headers:
            _install_header_provider()
        if settings.embedded:
            self._init_embedded(settings)
        with self._auth():
            return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)

    @staticmethod
    def _init_embedded(settings: RegistrySettings) -> None:
        """Create the SQLite registry once, so the default experiment's artifacts land in our folder."""
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        assert settings.artifact_root is not None
        artifacts = Path(settings.artifact_root)
        artifacts.mkdir(parents=True, exist_ok=True)
        # Two processes migrating a fresh database at once would collide: serialise on a lock file.
        with open(artifacts.parent / ".mlflow.db.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                SqlAlchemyStore(settings.tracking_uri, artifacts.as_uri())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def _auth(self) -> Iterator[None]:
        """Send the connection's credentials with the MLflow requests made inside this block."""
        headers = self.settings.headers
        if not headers:
            yield
            return
        token = _AUTH_HEADERS.set(headers)
        try:
            yield
        finally:
            _AUTH_HEADERS.reset(token)

    def _call(self, what: str, fn: Callable[[], _T], *, name: str | None = None, version: Any = None) -> _T:
        """Run one MLflow call with credentials; turn its errors into ours, with context."""
        from mlflow.exceptions import MlflowException

        try:
            with self._auth():
                return fn()
        except MlflowException as e:
            missing = e.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                e.error_code == "INVALID_PARAMETER_VALUE" and "not found" in e.message.lower()
            )
            if missing:
                target = f"model {name!r}" + (f" version {version}" if version is not None else "")
                raise ModelNotFound(f"{target} not found in {self.settings.registry_uri}: {e.message}") from e
            raise RegistryError(f"{what} failed at {self.settings.registry_uri}: {e.message}") from e
        except OSError as e:
            raise RegistryError(f"{what} failed at {self.settings.registry_uri}: {e}") from e

    def test_connection(self) -> tuple[bool, str]:
        """Check that the registry answers (lists one registered model)."""
        try:
            self._call(
                "listing registered models", lambda: self.client.search_registered_models(max_results=1)
            )
        except Exception as e:  # the UI shows the message; any failure means "not reachable"
            return False, f"{type(e).__name__}: {e}"
        return True, f"MLflow registry at {self.settings.registry_uri} answers"

    # --- register ----------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        source: str | os.PathLike[str],
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        aliases: list[str] | None = None,
        baseline: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Copy a model into the registry as the next version of ``name``.

        :param name: registered model name (created if missing).
        :param source: a local file or folder, a ``runs:/<run_id>/<path>`` or a
            ``models:/<name>/<version|@alias>`` URI.
        :param description: version description.
        :param tags: version tags.
        :param aliases: aliases to point at the new version (e.g. ``["candidate"]``).
        :param baseline: JSON-able training-data profile, kept with the version for drift checks.
        :return: ``{"name", "version", "uri", "source", "model_id"}``.
        """
        source = os.fspath(source)
        if baseline is not None:
            try:
                baseline_json = json.dumps(baseline, sort_keys=True)
            except (TypeError, ValueError) as e:
                raise RegistryError(f"baseline for model {name!r} is not JSON-able: {e}") from e
        with tempfile.TemporaryDirectory(prefix="mlops-register-") as tmp:
            files, run_source = self._materialise(source, Path(tmp) / "model")
            if baseline is not None:
                sidecar = Path(tmp) / "sidecar"
                sidecar.mkdir()
                (sidecar / "baseline.json").write_text(baseline_json)
            lm, run_id = self._call(
                f"logging model files for {name!r}", lambda: self._log_model(name, source, files, run_source)
            )
            if baseline is not None:
                self._call(f"storing the baseline of {name!r}", lambda: self._log_sidecar(lm, sidecar))
        mv = self._create_version(name, lm, run_id, tags=tags, description=description)
        for alias in aliases or []:
            self.set_alias(name, alias, mv.version)
        log.info("Registered model %s version %s from %s", name, mv.version, source)
        return {
            "name": name,
            "version": str(mv.version),
            "uri": f"models:/{name}/{mv.version}",
            "source": source,
            "model_id": lm.model_id,
        }

    def _materialise(self, source: str, dst: Path) -> tuple[Path, str | None]:
        """Return a local path holding the source's files, and the run it came from (if any)."""
        if source.startswith("runs:/"):
            from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

            def fetch_run_files() -> Path:
                uri = RunsArtifactRepository.get_underlying_uri(source, self.settings.tracking_uri)
                parent, _, leaf = uri.rstrip("/").rpartition("/")
                dst.mkdir(parents=True)
                return Path(self._artifact_repo(parent).download_artifacts(leaf, dst_path=str(dst)))

            local = self._call(f"downloading {source}", fetch_run_files)
            return local, source[len("runs:/") :].split("/")[0]
        if source.startswith("models:/"):
            ref = source[len("models:/") :].strip("/")
            src_name, sep, alias = ref.partition("@")
            if not sep:
                src_name, _, number = ref.rpartition("/")
                alias = ""
            if not src_name:
                raise RegistryError(
                    f"model URI {source!r} must be models:/<name>/<version> or models:/<name>@<alias>"
                )
            version = self.resolve_version(src_name, f"@{alias}" if alias else number)
            self._download_tree(self._storage_uri(src_name, version), dst, name=src_name, version=version)
            return dst, None
        path = Path(source)
        if not path.exists():
            raise RegistryError(f"model source {source!r} does not exist (expected a file, folder or URI)")
        if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            raise RegistryError(f"model source folder {source!r} holds no files")
        return path, None

    def _experiment_id(self) -> str:
        client = self.client
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.settings.artifact_root:
            location = (Path(self.settings.artifact_root) / EXPERIMENT_NAME).as_uri()
        try:
            return client.create_experiment(EXPERIMENT_NAME, artifact_location=location)
        except Exception:  # another worker created it first
            experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _log_model(self, name: str, source: str, files: Path, run_source: str | None) -> tuple[Any, str]:
        """Create the registration run and logged model, and upload the files."""
        client = self.client
        experiment_id = self._experiment_id()
        run = client.create_run(
            experiment_id, run_name=f"register-{name}", tags={"mlops.source": source[:5000]}
        )
        run_id = run.info.run_id
        lm = client.create_logged_model(
            experiment_id,
            name=re.sub(r"[^A-Za-z0-9_.\-]", "-", name)[:200],
            source_run_id=run_id,
            tags={"mlops.source": source[:5000], **({"mlops.source_run": run_source} if run_source else {})},
        )
        repo = self._artifact_repo(lm.artifact_location)
        if files.is_file():
            repo.log_artifact(str(files))
        else:
            repo.log_artifacts(str(files))
        client.finalize_logged_model(lm.model_id, "READY")
        client.set_terminated(run_id)
        return lm, run_id

    def _log_sidecar(self, lm: Any, sidecar: Path) -> None:
        self._artifact_repo(lm.artifact_location).log_artifacts(str(sidecar), _SIDECAR_DIR)

    def _artifact_repo(self, uri: str) -> Any:
        """Return MLflow's artifact repository for ``uri``, its thread pool carrying our auth."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(uri, tracking_uri=self.settings.tracking_uri)
        if self.settings.headers:
            repo.thread_pool = _ContextThreadPool(max_workers=repo.max_workers)
        return repo

    def _create_version(
        self, name: str, lm: Any, run_id: str, *, tags: dict[str, str] | None, description: str | None
    ) -> ModelVersion:
        """Create the registered model if missing and the next version; retry lost races."""
        from mlflow.exceptions import MlflowException

        client = self.client

        def create() -> ModelVersion:
            try:
                with self._auth():
                    client.create_registered_model(name)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(e).lower():
                    raise
            with self._auth():
                return client.create_model_version(
                    name,
                    # The artifact location (not models:/<id>): MLflow's SQL registry resolves
                    # models:/ sources through the process-global tracking URI, which may be another.
                    source=lm.artifact_location,
                    run_id=run_id,
                    model_id=lm.model_id,
                    tags={k: str(v) for k, v in (tags or {}).items()},
                    description=description,
                )

        attempts = 8
        for attempt in range(attempts):
            try:
                return create()
            except MlflowException as e:
                message = str(e).lower()
                if attempt + 1 < attempts and any(marker in message for marker in _RETRYABLE):
                    time.sleep(0.05 * 2**attempt + random.uniform(0, 0.1))
                    continue
                raise RegistryError(
                    f"creating a version of model {name!r} failed at {self.settings.registry_uri}: "
                    f"{e.message}"
                ) from e
        raise AssertionError("unreachable")

    # --- read ----------------------------------------------------------------------------------

    def resolve_version(self, name: str, ref: str | int | None = "latest") -> str:
        """Turn ``"latest"``, ``"3"``, ``3`` or ``"@champion"`` into a version number.

        :param name: registered model name.
        :param ref: version number, ``"latest"`` (highest version) or ``"@alias"``.
        """
        ref = "latest" if ref is None else str(ref).strip()
        if ref.startswith("@"):
            mv = self._call(
                f"resolving {name}{ref}",
                lambda: self.client.get_model_version_by_alias(name, ref[1:]),
                name=name,
                version=ref,
            )
            return str(mv.version)
        if ref == "latest":
            versions = self.search_model_versions(name=name)
            if not versions:
                raise ModelNotFound(f"model {name!r} has no versions in {self.settings.registry_uri}")
            return str(max(int(v["version"]) for v in versions))
        if not ref.isdigit():
            raise ValueError(f"version reference {ref!r} is not a number, 'latest' or '@alias'")
        return ref

    def get_model_version(
        self, name: str, version: str | int | None = None, alias: str | None = None
    ) -> dict[str, Any]:
        """Return one version as a dict (latest when neither ``version`` nor ``alias`` is given).

        :param name: registered model name.
        :param version: version number or ``"latest"``.
        :param alias: alias instead of a version.
        """
        number = self.resolve_version(name, f"@{alias}" if alias else version)
        mv = self._call(
            f"reading {name} version {number}",
            lambda: self.client.get_model_version(name, number),
            name=name,
            version=number,
        )
        return self._version_dict(mv)

    def search_model_versions(
        self, name: str | None = None, tags: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Return the versions matching a name and/or exact tag values, newest first.

        :param name: registered model name (exact).
        :param tags: tag key/value pairs that must all match exactly.
        """
        clauses = []
        if name is not None:
            clauses.append(f"name = {_quote(name)}")
        for key, value in (tags or {}).items():
            if "`" not in key:
                clauses.append(f"tags.`{key}` = {_quote(str(value))}")
        query = " AND ".join(c for c in clauses if "\0" not in c)

        def search() -> list[Any]:
            found: list[Any] = []
            token: str | None = None
            while True:
                page = self.client.search_model_versions(query or None, max_results=1000, page_token=token)
                found.extend(page)
                token = page.token
                if not token:
                    return found

        versions = [self._version_dict(mv) for mv in self._call("searching model versions", search)]
        # MLflow's version search leaves aliases out; read them once per model.
        for model in {v["name"] for v in versions if not v["aliases"]}:
            aliases = self._call(
                f"reading aliases of {model}", partial(self._registered_model_aliases, model)
            )
            for v in versions:
                if v["name"] == model:
                    v["aliases"] = sorted(a for a, n in (aliases or {}).items() if str(n) == v["version"])
        # The filter above narrows; this makes matching exact whatever MLflow's filter grammar does.
        versions = [
            v
            for v in versions
            if (name is None or v["name"] == name)
            and all(v["tags"].get(k) == str(val) for k, val in (tags or {}).items())
        ]
        return sorted(versions, key=lambda v: (v["name"], -int(v["version"])))

    def _registered_model_aliases(self, name: str) -> dict[str, str]:
        return self.client.get_registered_model(name).aliases

    @staticmethod
    def _version_dict(mv: ModelVersion) -> dict[str, Any]:
        return {
            "name": mv.name,
            "version": str(mv.version),
            "uri": f"models:/{mv.name}/{mv.version}",
            "source": mv.source,
            "model_id": getattr(mv, "model_id", None),
            "run_id": mv.run_id,
            "description": mv.description or "",
            "tags": dict(mv.tags or {}),
            "aliases": list(getattr(mv, "aliases", None) or []),
            "status": mv.status,
            "created_ms": mv.creation_timestamp,
        }

    def _storage_uri(self, name: str, version: str) -> str:
        return self._call(
            f"locating {name} version {version}",
            lambda: self.client.get_model_version_download_uri(name, version),
            name=name,
            version=version,
        )

    def download_model(self, name: str, version: str | int, dst_dir: str | os.PathLike[str]) -> ModelRef:
        """Download a version's files into ``dst_dir`` (created; must be empty) and hash them.

        :param name: registered model name.
        :param version: version number, ``"latest"`` or ``"@alias"``.
        :param dst_dir: folder to fill; the baseline is not downloaded.
        :return: the version, its local path and ``sha256:`` digest.
        """
        number = self.resolve_version(name, version)
        dst = Path(dst_dir)
        if dst.exists() and any(dst.iterdir()):
            raise RegistryError(f"cannot download {name} version {number}: {dst} is not empty")
        dst.mkdir(parents=True, exist_ok=True)
        uri = self._storage_uri(name, number)
        self._download_tree(uri, dst, name=name, version=number)
        if not any(p.is_file() for p in dst.rglob("*")):
            raise RegistryError(f"model {name!r} version {number} has no files at {uri}")
        return ModelRef(name, number, str(dst), folder_digest(dst), f"models:/{name}/{number}")

    def _download_tree(self, uri: str, dst: Path, *, name: str, version: str) -> None:
        """Download a logged model's files (not its ``_mlops`` side folder) into ``dst``."""

        def download() -> None:
            dst.mkdir(parents=True, exist_ok=True)
            repo = self._artifact_repo(uri)
            for entry in repo.list_artifacts():
                if entry.path.strip("/") != _SIDECAR_DIR:
                    repo.download_artifacts(entry.path, dst_path=str(dst))

        self._call(f"downloading {name} version {version}", download, name=name, version=version)

    def get_baseline(self, name: str, version: str | int) -> dict[str, Any] | None:
        """Return the training-data baseline stored with a version, or ``None`` if it has none.

        :param name: registered model name.
        :param version: version number, ``"latest"`` or ``"@alias"``.
        """
        number = self.resolve_version(name, version)
        uri = self._storage_uri(name, number)
        with tempfile.TemporaryDirectory(prefix="mlops-baseline-") as tmp:

            def fetch() -> str | None:
                repo = self._artifact_repo(uri)
                if not any(e.path.endswith("baseline.json") for e in repo.list_artifacts(_SIDECAR_DIR)):
                    return None
                return repo.download_artifacts(_BASELINE_PATH, dst_path=tmp)

            local = self._call(f"reading the baseline of {name} version {number}", fetch, name=name)
            if local is None:
                return None
            return json.loads(Path(local).read_text())

    # --- aliases, usage, deletion ---------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point ``alias`` at a version (moving it if it pointed elsewhere)."""
        number = self.resolve_version(name, version)
        self._call(
            f"setting alias {alias!r} of {name}",
            lambda: self.client.set_registered_model_alias(name, alias, number),
            name=name,
            version=number,
        )

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias from a model."""
        self._call(
            f"deleting alias {alias!r} of {name}",
            lambda: self.client.delete_registered_model_alias(name, alias),
            name=name,
        )

    def mark_in_use(self, name: str, version: str | int, user: str) -> None:
        """Record that ``user`` (``deployment:<target>/<svc>`` or ``image:<ref>``) uses a version."""
        number = self.resolve_version(name, version)
        self._call(
            f"marking {name} version {number} in use",
            lambda: self.client.set_model_version_tag(name, number, _user_tag(user), user),
            name=name,
            version=number,
        )

    def release(self, name: str, version: str | int, user: str) -> None:
        """Forget that ``user`` uses a version (no error if it did not)."""
        from mlflow.exceptions import MlflowException

        number = self.resolve_version(name, version)
        try:
            with self._auth():
                self.client.delete_model_version_tag(name, number, _user_tag(user))
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"releasing {name} version {number} from {user}: {e.message}") from e

    def users(self, name: str, version: str | int) -> list[str]:
        """Return who uses a version (deployments and images), sorted."""
        tags = self.get_model_version(name, version)["tags"]
        return sorted(v for k, v in tags.items() if k.startswith(tuple(_USER_KINDS.values())))

    def delete_model_version(self, name: str, version: str | int) -> None:
        """Delete a version; refuse with :class:`ModelInUseError` while anything uses it."""
        number = self.resolve_version(name, version)
        in_use = self.users(name, number)
        if in_use:
            raise ModelInUseError(name, number, in_use)
        self._call(
            f"deleting {name} version {number}",
            lambda: self.client.delete_model_version(name, number),
            name=name,
            version=number,
        )

    def delete_model(self, name: str) -> None:
        """Delete a model and all its versions; refuse while any version is in use."""
        for v in self.search_model_versions(name=name):
            in_use = sorted(val for k, val in v["tags"].items() if k.startswith(tuple(_USER_KINDS.values())))
            if in_use:
                raise ModelInUseError(name, v["version"], in_use)
        self._call(f"deleting model {name}", lambda: self.client.delete_registered_model(name), name=name)


def _quote(value: str) -> str:
    """Quote a string literal for an MLflow filter; unquotable values match nothing server-side.

    MLflow's filter parser strips the outer quotes without unescaping, so a value holding both
    quote kinds cannot be expressed; it becomes a NUL marker and the clause is dropped (the
    hook filters exactly on the client side anyway).
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return "\0"


def _user_tag(user: str) -> str:
    """Return the version tag key that records ``user``.

    ``deployment:local/svc`` → ``mlops.deployment.local/svc``.

    MLflow tag keys allow letters, digits, ``_ . - /`` (and spaces); other characters become
    ``_`` and a short hash of the full user keeps keys distinct. The tag's value is the user.
    """
    kind, sep, rest = user.partition(":")
    if not sep or kind not in _USER_KINDS or not rest:
        raise ValueError(f"user {user!r} must look like 'deployment:<target>/<service>' or 'image:<ref>'")
    safe = _SAFE_TAG_CHARS.sub("_", rest).strip("/")
    safe = re.sub(r"/+", "/", safe).replace("/./", "/")
    if safe != rest or ".." in safe or len(safe) > 200:
        safe = f"{safe.replace('..', '_')[:200]}.{hashlib.sha256(rest.encode()).hexdigest()[:12]}"
    return _USER_KINDS[kind] + safe
