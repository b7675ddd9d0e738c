"""Where the data collector writes: a local folder or an Azure Blob Storage container.

A sink stores one finished part (a JSON Lines payload) under a relative key such as
``svc/digits/3/2024/05/01/13/1714568400123-41-9f2c1a-000007.jsonl``. Sinks are called from
the collector's background thread only, never from the request path. A write either
succeeds completely or raises :class:`SinkUnavailable`; writing the same key twice replaces
the part, so the collector can retry a part whose outcome it does not know without
producing duplicates.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from pathlib import Path
from typing import Any

__all__ = [
    "AzureBlobSink",
    "LocalFolderSink",
    "Sink",
    "SinkUnavailable",
    "open_sink",
]

AZURE_SCHEME = "azureblob"
CONNECTION_STRING_ENV = ("MLOPS_COLLECT_AZURE_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING")
ACCOUNT_URL_ENV = "MLOPS_COLLECT_AZURE_ACCOUNT_URL"


class SinkUnavailable(Exception):
    """A sink could not store a part; the collector keeps the part and retries later.

    :param sink: the sink's description (never holds a secret)
    :param key: the relative key of the part being written
    :param reason: what the storage said
    """

    def __init__(self, sink: str, key: str, reason: str) -> None:
        super().__init__(f"cannot write {key} to {sink}: {reason}")
        self.sink = sink
        self.key = key
        self.reason = reason


class Sink:
    """Store finished parts under relative keys; subclasses implement :meth:`write`."""

    def write(self, key: str, payload: bytes) -> None:
        """Store ``payload`` under ``key`` atomically, replacing any part of that key.

        :raises SinkUnavailable: the storage is unreachable or refused the write
        """
        raise NotImplementedError

    def describe(self) -> str:
        """Name the sink for logs, without secrets."""
        return type(self).__name__

    def close(self) -> None:
        """Release clients and connections."""


class LocalFolderSink(Sink):
    """Write parts as files under a root folder, through a temporary name and ``os.replace``.

    Readers listing ``*.jsonl`` never see half a part: the temporary file is a hidden
    ``.<name>.tmp`` in the same folder, renamed once complete and synced.

    :param root: the folder; created on first write
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return f"folder {self.root}"

    def write(self, key: str, payload: bytes) -> None:
        target = self.root.joinpath(*key.split("/"))
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise SinkUnavailable(self.describe(), key, f"{type(e).__name__}: {e.strerror or e}") from e


class AzureBlobSink(Sink):
    """Write parts as block blobs in a container, creating the container when it is missing.

    The container is created only when an upload reports ``ContainerNotFound``, so a
    credential scoped to an existing container (a container SAS) works too.

    The Azure client's own retries are switched off: the collector retries with its own
    bounded backoff, so one unreachable endpoint costs one short attempt, not minutes.

    :param container: the container name
    :param prefix: an optional blob-name prefix (no leading or trailing ``/``)
    :param connection_string: a storage connection string (account key or SAS)
    :param account_url: the account's blob endpoint, used when there is no connection string;
        it may carry a SAS token as its query string
    :param credential: a credential for ``account_url``; when none is given and the URL has
        no SAS token, ``azure.identity.DefaultAzureCredential`` (managed identity, workload
        identity, environment) is used if installed
    :param client: an already built ``BlobServiceClient`` (tests, custom pipelines)
    """

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: Any = None,
        client: Any = None,
    ) -> None:
        if not container:
            raise ValueError("an Azure Blob sink needs a container: azureblob://<container>/<prefix>")
        self.container = container
        self.prefix = prefix.strip("/")
        if client is None:
            client = self._build_client(connection_string, account_url, credential)
        self._service = client
        self._container = client.get_container_client(container)

    @staticmethod
    def _build_client(connection_string: str | None, account_url: str | None, credential: Any) -> Any:
        try:
            from azure.storage.blob import BlobServiceClient
        except ImportError as e:  # the scoring image installs it only with the [azure] extra
            raise ImportError(
                "the Azure Blob sink needs azure-storage-blob: pip install 'airflow-mlops-scoring[azure]'"
            ) from e
        # Short timeouts and no SDK retries: the collector's flusher owns retrying.
        options: dict[str, Any] = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 30}
        if connection_string:
            return BlobServiceClient.from_connection_string(connection_string, **options)
        if not account_url:
            raise ValueError(
                "an Azure Blob sink needs a connection string "
                f"({CONNECTION_STRING_ENV[0]}) or an account URL ({ACCOUNT_URL_ENV})"
            )
        if credential is None and not urllib.parse.urlsplit(account_url).query:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError as e:
                raise ImportError(
                    "an account URL without a SAS token needs azure-identity for DefaultAzureCredential"
                ) from e
            credential = DefaultAzureCredential()
        return BlobServiceClient(account_url, credential=credential, **options)

    def describe(self) -> str:
        # account_name comes from the client, never the key or SAS token.
        account = getattr(self._service, "account_name", "?")
        where = f"{self.container}/{self.prefix}" if self.prefix else self.container
        return f"azureblob://{where} (account {account})"

    def write(self, key: str, payload: bytes) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        name = f"{self.prefix}/{key}" if self.prefix else key
        settings = ContentSettings(content_type="application/x-ndjson")
        try:
            try:
                self._container.upload_blob(name, payload, overwrite=True, content_settings=settings)
            except ResourceNotFoundError as e:
                if getattr(e, "error_code", None) != "ContainerNotFound":
                    raise
                with contextlib.suppress(ResourceExistsError):  # another replica created it first
                    self._container.create_container()
                self._container.upload_blob(name, payload, overwrite=True, content_settings=settings)
        except AzureError as e:
            reason = getattr(e, "reason", None) or getattr(e, "error_code", None) or type(e).__name__
            raise SinkUnavailable(self.describe(), name, str(reason)) from e

    def close(self) -> None:
        self._service.close()


def open_sink(
    url: str | os.PathLike[str],
    *,
    azure_connection_string: str | None = None,
) -> Sink:
    """Open the sink a setting names: a folder path, ``file://`` URL or ``azureblob://`` URL.

    ``azureblob://<container>/<optional prefix>`` uses ``azure_connection_string``, else the
    environment's ``MLOPS_COLLECT_AZURE_CONNECTION_STRING`` or
    ``AZURE_STORAGE_CONNECTION_STRING``, else the account URL in
    ``MLOPS_COLLECT_AZURE_ACCOUNT_URL`` (with a SAS token or an Azure identity).

    :param url: the sink setting
    :param azure_connection_string: the storage connection string for ``azureblob://``
    :raises ValueError: the setting is empty, has an unknown scheme, or lacks credentials
    """
    text = os.fspath(url).strip()
    if not text:
        raise ValueError("the collector sink is empty: give a folder, file:// or azureblob:// URL")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme == AZURE_SCHEME:
        connection_string = azure_connection_string or next(
            (os.environ[name] for name in CONNECTION_STRING_ENV if os.environ.get(name)), None
        )
        return AzureBlobSink(
            parts.netloc,
            urllib.parse.unquote(parts.path),
            connection_string=connection_string,
            account_url=None if connection_string else os.environ.get(ACCOUNT_URL_ENV),
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// sink must be a local path, got host {parts.netloc!r}")
        return LocalFolderSink(urllib.parse.unquote(parts.path))
    # One-letter "schemes" are Windows drive letters, i.e. plain paths.
    if parts.scheme and len(parts.scheme) > 1:
        raise ValueError(
            f"unknown collector sink scheme {parts.scheme!r}: use a folder, file:// or azureblob://"
        )
    return LocalFolderSink(text)
