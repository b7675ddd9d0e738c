"""The data collector's Azure Blob sink against Azurite, a real Blob Storage server on loopback."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from mlops_scoring.collector import Collector, ModelDataCollector, set_current
from mlops_scoring.sinks import AzureBlobSink, open_sink

pytestmark = pytest.mark.azurite

TS = datetime(2024, 5, 1, 9, 30, tzinfo=UTC).timestamp()


def record(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": f"req-{i}",
        "ts": TS,
        "model": "digits",
        "version": "2",
        "inputs": [[i, i + 1]],
        "outputs": [i],
        "latency_ms": 0.5,
        **extra,
    }


def blobs(connection_string: str, container: str) -> dict[str, list[dict[str, Any]]]:
    from azure.storage.blob import ContainerClient

    with ContainerClient.from_connection_string(connection_string, container) as client:
        return {
            b.name: [orjson.loads(line) for line in client.download_blob(b.name).readall().splitlines()]
            for b in client.list_blobs()
        }


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_blobs_appear_with_layout_names_and_content(azurite_connection_string: str) -> None:
    container = f"collect-{uuid.uuid4().hex[:12]}"  # does not exist yet: the sink creates it
    collector = Collector(
        service="svc",
        sink=f"azureblob://{container}/monitoring/raw",
        azure_connection_string=azurite_connection_string,
        flush_rows=10,
    )
    collector.start()
    for i in range(25):
        collector.collect(record(i))
    set_current(collector)
    try:
        ModelDataCollector("digits", "predictions").collect([[7]], user_correlation_id="c-1")
    finally:
        set_current(None)
    collector.close()

    found = blobs(azurite_connection_string, container)
    names = sorted(found)
    assert all(n.startswith("monitoring/raw/svc/digits/") for n in names)
    folders = {n.rsplit("/", 1)[0] for n in names}
    assert "monitoring/raw/svc/digits/2/2024/05/01/09" in folders
    [custom] = folders - {"monitoring/raw/svc/digits/2/2024/05/01/09"}
    assert custom.startswith("monitoring/raw/svc/digits/custom/")
    hour = datetime.strptime(custom.split("/custom/")[1], "%Y/%m/%d/%H").replace(tzinfo=UTC)
    assert timedelta(0) <= datetime.now(UTC) - hour < timedelta(hours=2)
    assert all(n.endswith(".jsonl") for n in names)
    rows = [row for part in found.values() for row in part]
    by_id = {r.get("correlation_id") or r["request_id"]: r for r in rows}
    assert sorted(k for k in by_id if k.startswith("req-")) == sorted(f"req-{i}" for i in range(25))
    assert by_id["req-3"] == {
        "request_id": "req-3",
        "ts": "2024-05-01T09:30:00.000000Z",
        "service": "svc",
        "model": "digits",
        "version": "2",
        "inputs": [[3, 4]],
        "outputs": [3],
        "latency_ms": 0.5,
    }
    assert by_id["c-1"]["data"] == [[7]] and by_id["c-1"]["designation"] == "predictions"
    assert collector.stats() == {
        "collected": 26,
        "written": 26,
        "dropped": 0,
        "buffered": 0,
        "sink_errors": 0,
    }


def test_existing_container_and_sas_account_url(azurite_connection_string: str) -> None:
    from azure.storage.blob import (
        AccountSasPermissions,
        BlobServiceClient,
        ResourceTypes,
        generate_account_sas,
    )

    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    container = f"collect-{uuid.uuid4().hex[:12]}"
    service.create_container(container)
    sas = generate_account_sas(
        service.account_name,
        service.credential.account_key,
        resource_types=ResourceTypes(container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, create=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    sink = AzureBlobSink(container, account_url=f"{service.url.rstrip('/')}?{sas}")
    collector = Collector(service="svc", sink=sink)
    collector.collect(record(1))
    collector.close()
    [(name, rows)] = blobs(azurite_connection_string, container).items()
    assert name.startswith("svc/digits/2/2024/05/01/09/")
    assert [r["request_id"] for r in rows] == ["req-1"]
    assert "sig=" not in sink.describe() and "AccountKey" not in sink.describe()


def test_unreachable_endpoint_never_blocks_collect_and_counts_drops(azurite_connection_string: str) -> None:
    unreachable = azurite_connection_string.replace("127.0.0.1:10000", f"127.0.0.1:{closed_port()}")
    collector = Collector(
        service="svc",
        sink="azureblob://down/prefix",
        azure_connection_string=unreachable,
        max_buffer=50,
        flush_rows=10,
        flush_seconds=0.01,
    )
    collector.retry_base_seconds = 0.01
    collector.retry_max_seconds = 0.05
    collector.start()
    for i in range(200):
        collector.collect(record(i))
    stats = collector.stats()
    assert stats["collected"] == 200 and stats["dropped"] == 150 and stats["buffered"] == 50
    collector.close(timeout=1.0)
    stats = collector.stats()
    assert stats["written"] == 0 and stats["dropped"] == 200 and stats["buffered"] == 0
    assert stats["sink_errors"] >= 1


def test_open_sink_reads_the_connection_string_from_the_environment(
    azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_COLLECT_AZURE_CONNECTION_STRING", azurite_connection_string)
    container = f"collect-{uuid.uuid4().hex[:12]}"
    sink = open_sink(f"azureblob://{container}")
    sink.write("a/b.jsonl", b'{"x":1}\n')
    sink.close()
    assert blobs(azurite_connection_string, container) == {"a/b.jsonl": [{"x": 1}]}
