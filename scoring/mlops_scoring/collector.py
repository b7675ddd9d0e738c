"""The scoring service's data collector: sample, buffer, and flush records off the request path.

The request path calls :meth:`Collector.should_sample` and :meth:`Collector.collect_scored`
(or :meth:`Collector.collect` for free-form records); all are O(1) and never touch I/O or
serialise anything. ``collect_scored`` takes the request body and the encoded outputs as
the bytes the server already has, and the flusher writes each line by concatenating them
into the record (both are JSON documents, so the line is JSON): no record is decoded or
re-encoded, which keeps the flusher's share of the GIL small. One background thread turns
buffered records into JSON Lines parts and writes them to a sink
(:mod:`mlops_scoring.sinks`) under the shared layout::

    <service>/<model>/<version>/<yyyy>/<mm>/<dd>/<hh>/<epoch_ms>-<pid>-<instance>-<seq>.jsonl

The buffer is bounded: past ``max_buffer`` records (queued plus not yet written), new
records are dropped and counted, so a sink that is down costs memory up to the bound and
nothing else. The flusher retries a failed part with bounded, jittered exponential backoff
under the same part name (a retried part replaces, never duplicates).

Entry scripts log their own data with :class:`ModelDataCollector`, the Azure ML SDK's
class, which writes through whichever collector :func:`set_current` installed.
"""

from __future__ import annotations

import base64
import contextvars
import itertools
import logging
import os
import random
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from mlops_scoring.sinks import Sink, SinkUnavailable, open_sink

__all__ = [
    "Collector",
    "ModelDataCollector",
    "current_request_id",
    "get_current",
    "set_current",
]

log = logging.getLogger(__name__)

#: The id of the request being scored; the server sets it so that records logged by an
#: entry script carry it (and default their correlation id to it).
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mlops_current_request_id", default=None
)

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
_HEAD_FIELDS = ("request_id", "ts", "service", "model", "version")
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_WARN_INTERVAL_SECONDS = 30.0
#: The flusher releases the GIL after this many scored records, so that serialising a
#: large batch never holds the event loop (or granian's threads) for long.
_YIELD_EVERY = 64


def _segment(value: Any, default: str) -> str:
    """Make one path segment of a key: no separators, not hidden (no ``..``), never empty."""
    text = str(value) if value is not None and value != "" else default
    text = "".join(c if c in _SAFE else "_" for c in text)
    return "_" + text[1:] if text.startswith(".") else text


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_second(second: int) -> bytes:
    """Return ``YYYY-MM-DDTHH:MM:SS.`` (UTC) for whole epoch seconds, as bytes."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.").encode()


def _to_jsonable(obj: Any) -> Any:
    """Convert what orjson cannot serialise natively (pandas, non-contiguous numpy, bytes, sets)."""
    if hasattr(obj, "columns") and hasattr(obj, "to_numpy"):  # a DataFrame: rows, columns are names
        return obj.to_numpy().tolist()
    if hasattr(obj, "tolist"):  # numpy arrays orjson declines, numpy scalars, pandas Series
        return obj.tolist()
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"cannot serialise a {type(obj).__module__}.{type(obj).__qualname__}")


def _one_line(raw: bytes) -> bytes:
    """Return ``raw`` as one line of JSON: re-encoded when it is JSON, else as a JSON string."""
    try:
        return orjson.dumps(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return orjson.dumps(raw.decode("utf-8", "replace"))


@dataclass(slots=True)
class _Part:
    """A serialised part waiting to be written: its key, payload and record count."""

    key: str
    payload: bytes
    records: int


class _Throttle:
    """Let a repeated warning through at most once per interval."""

    def __init__(self, interval: float = _WARN_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._last = -float("inf")

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True


class Collector:
    """Collect scoring records and flush them in batches to a folder or Azure Blob Storage.

    :param service: the service name, the first segment of every key
    :param sink: a folder path, a ``file://`` URL, ``azureblob://<container>/<prefix>``,
        or a :class:`~mlops_scoring.sinks.Sink` instance
    :param sampling_rate: the fraction of requests to collect, 0..1
    :param max_buffer: the most records held in memory (queued plus waiting to be written)
    :param flush_rows: write a part once this many records are queued
    :param flush_seconds: write whatever is queued at least this often
    :param azure_connection_string: the storage connection string for ``azureblob://``
    :param model_versions: model name → version, used for entry-script records
    :raises ValueError: a setting is out of range or the sink cannot be opened
    """

    #: First retry delay after a failed write, doubled per failure up to the maximum.
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 30.0

    def __init__(
        self,
        *,
        service: str,
        sink: str | Sink,
        sampling_rate: float = 1.0,
        max_buffer: int = 10000,
        flush_rows: int = 1000,
        flush_seconds: float = 2.0,
        azure_connection_string: str | None = None,
        model_versions: Mapping[str, str] | None = None,
    ) -> None:
        if not 0.0 <= sampling_rate <= 1.0:
            raise ValueError(f"sampling_rate must be within 0..1, got {sampling_rate}")
        if max_buffer < 1 or flush_rows < 1:
            raise ValueError("max_buffer and flush_rows must be at least 1")
        if flush_seconds <= 0:
            raise ValueError(f"flush_seconds must be positive, got {flush_seconds}")
        self.service = _segment(service, "default")
        self.sampling_rate = float(sampling_rate)
        self.max_buffer = int(max_buffer)
        self.flush_rows = int(flush_rows)
        self.flush_seconds = float(flush_seconds)
        self._sink = (
            sink
            if isinstance(sink, Sink)
            else open_sink(sink, azure_connection_string=azure_connection_string)
        )
        self._versions: dict[str, str] = dict(model_versions or {})

        self._queue: deque[dict[str, Any] | tuple[Any, ...]] = deque()
        self._lock = threading.Lock()
        self._collected = 0
        self._written = 0
        self._dropped = 0
        self._buffered = 0  # queued + serialised but not yet written
        self._sink_errors = 0
        self._closed = False
        self._abandoned = False

        self._pending: list[_Part] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

        self._instance = os.urandom(3).hex()  # containers all run as pid 1: keep part names unique
        self._seq = itertools.count()
        self._reported_drops = 0
        self._drop_throttle = _Throttle()
        self._error_throttle = _Throttle()
        self._encode_throttle = _Throttle()

    # -- request path -------------------------------------------------------------------

    def should_sample(self, key: str | None = None) -> bool:
        """Decide whether to collect this request.

        :param key: optional request or correlation id; with it the decision is a stable
            hash of the key, so records logged for one request are kept or skipped together
        """
        rate = self.sampling_rate
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        if key is None:
            return random.random() < rate
        return zlib.crc32(key.encode()) < rate * 4294967296.0

    def collect(self, record: dict[str, Any]) -> None:
        """Queue one record; never blocks on I/O. Past the buffer bound, drop and count it.

        Keys: ``request_id``, ``ts`` (epoch seconds), ``model``, ``version``, ``inputs``,
        ``outputs``, ``latency_ms``; other keys are written as given. The record is
        serialised later on the flusher thread, so callers must not mutate it afterwards.
        """
        self._enqueue(record)

    def collect_scored(
        self,
        request_id: str,
        ts: float,
        model: str,
        version: str,
        inputs: bytes,
        outputs: bytes,
        latency_ms: float,
        inputs_are_json: bool = True,
    ) -> None:
        """Queue one scored request as the bytes the server read and wrote; never blocks on I/O.

        :param request_id: the request's id
        :param ts: epoch seconds
        :param model: the model name
        :param version: the model version
        :param inputs: the request body, a JSON document as sent (or, with
            ``inputs_are_json=False``, text an entry script received, written as a JSON
            string unless it parses as JSON)
        :param outputs: the encoded outputs, a JSON document
        :param latency_ms: the time from request start to response, ms
        :param inputs_are_json: whether ``inputs`` is known to be one valid JSON document
        """
        record = (request_id, ts, model, version, inputs, outputs, latency_ms, inputs_are_json)
        self._enqueue(record)

    def _enqueue(self, record: Any) -> None:
        """Append one record under the buffer bound, or drop and count it; wake the flusher when full."""
        with self._lock:
            if self._closed or self._buffered >= self.max_buffer:
                self._dropped += 1
                self._collected += 1
                return
            self._queue.append(record)
            self._buffered += 1
            self._collected += 1
            queued = len(self._queue)
        if queued == self.flush_rows:
            self._wake.set()

    def stats(self) -> dict[str, int]:
        """Return the counters: collected = written + dropped + buffered."""
        with self._lock:
            return {
                "collected": self._collected,
                "written": self._written,
                "dropped": self._dropped,
                "buffered": self._buffered,
                "sink_errors": self._sink_errors,
            }

    # -- versions for entry-script records ----------------------------------------------

    def set_model_versions(self, versions: Mapping[str, str]) -> None:
        """Tell the collector which version of each model the service runs."""
        self._versions = dict(versions)

    def model_version(self, model: str) -> str:
        """Return the version the service runs of ``model``, or ``"custom"`` when unknown."""
        return self._versions.get(model, "custom")

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the background flusher thread (once)."""
        with self._start_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"mlops-collector-{self.service}", daemon=True
            )
            self._thread.start()
        log.info(
            "Collecting to %s (sampling %.3g, buffer %d records, flush every %d rows or %.3g s)",
            self._sink.describe(),
            self.sampling_rate,
            self.max_buffer,
            self.flush_rows,
            self.flush_seconds,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Write everything buffered within ``timeout`` seconds, then stop; idempotent.

        Records still unwritten at the deadline (the sink is down) are counted as dropped.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True  # from here collect() drops and counts
        self._deadline = time.monotonic() + max(0.0, timeout)
        self.start()
        self._stop.set()
        self._wake.set()
        assert self._thread is not None
        self._thread.join(timeout + 1.0)
        if self._thread.is_alive():
            # The sink call is stuck past the deadline; give up on what it holds.
            with self._lock:
                lost = self._buffered
                self._dropped += lost
                self._buffered = 0
                self._abandoned = True
            log.error(
                "Collector closed with %d records unwritten: %s did not answer", lost, self._sink.describe()
            )
        else:
            self._sink.close()
        stats = self.stats()
        log.info(
            "Collector closed: %d collected, %d written, %d dropped",
            *(stats[k] for k in ("collected", "written", "dropped")),
        )

    # -- flusher thread -----------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while True:
            stopping = self._stop.is_set()
            if not stopping and not self._pending and len(self._queue) < self.flush_rows:
                self._wake.wait(self.flush_seconds)
                self._wake.clear()
                stopping = self._stop.is_set()
            self._report_drops()
            if self._drain():
                failures = 0
                if stopping:
                    break
                continue
            failures += 1
            delay = min(self.retry_max_seconds, self.retry_base_seconds * 2 ** min(failures - 1, 30))
            delay *= random.uniform(0.5, 1.0)
            if stopping:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(delay, remaining))
            else:
                self._stop.wait(delay)  # close() cuts the backoff short
        self._report_drops()
        self._give_up_remaining()

    def _drain(self) -> bool:
        """Write pending parts, then queued records batch by batch; False when the sink fails."""
        while True:
            if self._stop.is_set() and time.monotonic() >= self._deadline:
                return not self._pending and not self._queue
            if not self._pending:
                if not self._queue:
                    return True
                self._pending = self._encode(self._next_batch())
            while self._pending:
                part = self._pending[0]
                try:
                    self._sink.write(part.key, part.payload)
                except SinkUnavailable as e:
                    self._note_sink_error(e)
                    return False
                except Exception as e:  # a bug in a sink must not kill the flusher thread
                    self._note_sink_error(e, unexpected=True)
                    return False
                self._pending.pop(0)
                with self._lock:
                    if not self._abandoned:
                        self._buffered -= part.records
                        self._written += part.records

    def _next_batch(self) -> list[dict[str, Any] | tuple[Any, ...]]:
        queue = self._queue
        # Single consumer: popleft is atomic, no lock needed against collect()'s append.
        return [queue.popleft() for _ in range(min(self.flush_rows, len(queue)))]

    def _encode(self, batch: list[dict[str, Any] | tuple[Any, ...]]) -> list[_Part]:
        """Serialise a batch into one part per (model, version, UTC hour)."""
        groups: dict[tuple[str, str, int], list[bytes]] = {}
        bad = 0
        now = time.time()
        heads: dict[tuple[str, str], tuple[str, str, bytes, dict[int, list[bytes]]]] = {}
        service_json = orjson.dumps(self.service)
        dumps = orjson.dumps
        iso_second = _iso_second
        last_second, prefix, scored = -1, b"", 0
        for record in batch:
            if type(record) is tuple:
                request_id, ts, model_name, version_name, inputs, outputs, latency_ms, checked = record
                head = heads.get((model_name, version_name))
                if head is None:
                    model, version = _segment(model_name, "unknown"), _segment(version_name, "unknown")
                    middle = b'","service":%b,"model":%b,"version":%b,"inputs":' % (
                        service_json,
                        orjson.dumps(model),
                        orjson.dumps(version),
                    )
                    head = heads[(model_name, version_name)] = (model, version, middle, {})
                if not checked or b"\n" in inputs or b"\r" in inputs:
                    inputs = _one_line(inputs)
                second, micros = divmod(round(ts * 1_000_000), 1_000_000)
                if second != last_second:
                    last_second, prefix = second, iso_second(second)
                lines = head[3].get(second // 3600)
                if lines is None:
                    lines = head[3][second // 3600] = []
                lines.append(
                    b'{"request_id":%b,"ts":"%b%06dZ%b%b,"outputs":%b,"latency_ms":%b}\n'
                    % (dumps(request_id), prefix, micros, head[2], inputs, outputs, dumps(latency_ms))
                )
                scored += 1
                if not scored % _YIELD_EVERY:
                    time.sleep(0)  # let the event loop (and granian's threads) take the GIL
                continue
            assert isinstance(record, dict)  # the flusher queues only tuples and dicts
            ts = record.get("ts")
            if not isinstance(ts, int | float):
                ts = now
            model = _segment(record.get("model"), "unknown")
            version = _segment(record.get("version"), "unknown")
            row: dict[str, Any] = {
                "request_id": record.get("request_id"),
                "ts": _iso(ts),
                "service": self.service,
                "model": model,
                "version": version,
            }
            for key, value in record.items():
                if key not in _HEAD_FIELDS:
                    row[key] = value
            try:
                line = orjson.dumps(row, default=_to_jsonable, option=_ORJSON_OPTIONS)
            except TypeError as e:  # orjson.JSONEncodeError is a TypeError
                bad += 1
                if self._encode_throttle.ready():
                    log.warning("Dropping a collected record that is not JSON-serialisable: %s", e)
                continue
            groups.setdefault((model, version, int(ts // 3600)), []).append(line)
        for model, version, _, by_hour in heads.values():
            for hour, lines in by_hour.items():
                groups.setdefault((model, version, hour), []).extend(lines)
        if bad:
            with self._lock:
                if not self._abandoned:
                    self._buffered -= bad
                    self._dropped += bad
        stamp = int(now * 1000)
        pid = os.getpid()
        parts = []
        for (model, version, hour), lines in groups.items():
            folder = datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y/%m/%d/%H")
            name = f"{stamp:013d}-{pid}-{self._instance}-{next(self._seq):06d}.jsonl"
            key = f"{self.service}/{model}/{version}/{folder}/{name}"
            parts.append(_Part(key, b"".join(lines), len(lines)))
        return parts

    def _note_sink_error(self, error: Exception, *, unexpected: bool = False) -> None:
        with self._lock:
            self._sink_errors += 1
            errors, buffered = self._sink_errors, self._buffered
        if not self._error_throttle.ready():
            return
        if unexpected:
            log.error(
                "Collector sink %s failed unexpectedly; retrying", self._sink.describe(), exc_info=error
            )
        else:
            log.warning(
                "Collector sink unavailable (%s); %d records buffered, %d failed writes so far; retrying",
                error,
                buffered,
                errors,
            )

    def _report_drops(self) -> None:
        dropped = self._dropped
        if dropped > self._reported_drops and self._drop_throttle.ready():
            log.warning(
                "Collector dropped %d records (buffer full at %d records, or closed); %d dropped in total",
                dropped - self._reported_drops,
                self.max_buffer,
                dropped,
            )
            self._reported_drops = dropped

    def _give_up_remaining(self) -> None:
        leftover = sum(p.records for p in self._pending)
        self._pending = []
        while self._queue:
            self._queue.popleft()
            leftover += 1
        if not leftover:
            return
        with self._lock:
            if self._abandoned:
                return
            self._buffered -= leftover
            self._dropped += leftover
        log.error(
            "Collector stopped with %d records unwritten: %s is unavailable", leftover, self._sink.describe()
        )


_current: Collector | None = None


def set_current(collector: Collector | None) -> None:
    """Install the collector that :class:`ModelDataCollector` writes through (None: disable)."""
    global _current
    _current = collector


def get_current() -> Collector | None:
    """Return the installed collector, if any."""
    return _current


class ModelDataCollector:
    """Log data from an entry script, as the Azure ML SDK's ``ModelDataCollector`` does.

    ``collect`` is a no-op returning ``""`` when the service collects nothing. Records go
    under the layout's ``<model>/<version>`` with model = ``model_name`` and version = the
    version the service runs of that model, else ``"custom"``; each line carries
    ``designation``, ``feature_names``, ``data`` and ``correlation_id``.

    :param model_name: the model the data belongs to
    :param designation: what the data is, e.g. ``inputs``, ``predictions``, ``features``
    :param feature_names: column names of the data; taken from a DataFrame when omitted
    """

    def __init__(
        self, model_name: str, designation: str = "inputs", feature_names: list[str] | None = None
    ) -> None:
        self.model_name = model_name
        self.designation = designation
        self.feature_names = list(feature_names) if feature_names is not None else None

    def collect(self, input_data: Any, user_correlation_id: str = "") -> str:
        """Queue ``input_data`` for collection and return its correlation id.

        The correlation id is ``user_correlation_id``, else the current request's id, else a
        new one; use the same id across collectors to join inputs and predictions.
        The data is serialised later, off the request path: do not mutate it afterwards.
        """
        collector = _current
        if collector is None:
            return ""
        request_id = current_request_id.get()
        correlation_id = user_correlation_id or request_id or uuid.uuid4().hex
        if not collector.should_sample(correlation_id):
            return correlation_id
        feature_names = self.feature_names
        if feature_names is None and hasattr(input_data, "columns"):
            feature_names = [str(c) for c in input_data.columns]
        collector.collect(
            {
                "request_id": request_id,
                "ts": time.time(),
                "model": self.model_name,
                "version": collector.model_version(self.model_name),
                "designation": self.designation,
                "feature_names": feature_names,
                "data": input_data,
                "correlation_id": correlation_id,
            }
        )
        return correlation_id
