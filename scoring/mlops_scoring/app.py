"""The ASGI app: a tiny router around the core, with auth, limits, batching and metrics.

No web framework sits on the request path: a dict maps the path to a handler, headers are
read in one pass, response headers are mostly precomputed, and every error goes through
one map (:mod:`mlops_scoring.errors`) to the same JSON body. The model loads once in the
lifespan start-up, in a thread; only then does ``/health/ready`` answer 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import orjson

from mlops_scoring import core
from mlops_scoring.batching import Job, Runner, stack_and_split
from mlops_scoring.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RunFailed,
    ScoringError,
    ScoringTimeout,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    error_body,
)
from mlops_scoring.metrics import Metrics
from mlops_scoring.models import EntryScriptModel, ModelLoadError, OnnxModel, find_onnx_file
from mlops_scoring.openapi import openapi_document
from mlops_scoring.settings import Settings, load_keys
from mlops_scoring.version import version_document

__all__ = ["CollectorLike", "ScoringApp", "create_app"]

log = logging.getLogger("mlops_scoring")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = b"application/json"
_SCORING_ROUTES = ("/score", "/invocations")
_ROUTES: dict[str, str] = {
    "/score": "POST",
    "/invocations": "POST",
    "/health/live": "GET",
    "/health/ready": "GET",
    "/swagger.json": "GET",
    "/metrics": "GET",
    "/version": "GET",
}
#: Bodies larger than this are parsed in a thread, so one big request cannot stall the loop.
_PARSE_INLINE_BYTES = 64 * 1024


class CollectorLike(Protocol):
    """What the server needs of a data collector (:class:`mlops_scoring.collector.Collector`)."""

    def start(self) -> None: ...
    def should_sample(self) -> bool: ...
    def collect(self, record: dict[str, Any]) -> None: ...
    def close(self, timeout: float = 10.0) -> None: ...
    def stats(self) -> dict[str, int]: ...


def create_app(settings: Settings, *, collector: CollectorLike | None = None) -> ScoringApp:
    """Build the scoring app; the model loads when the server runs the lifespan start-up.

    :param settings: the service's settings
    :param collector: a collector to use instead of one built from ``settings.collect_sink``
    """
    return ScoringApp(settings, collector=collector)


class ScoringApp:
    """The ASGI application (see :func:`create_app`)."""

    def __init__(self, settings: Settings, *, collector: CollectorLike | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.ready = False
        self.draining = False
        self.collector: CollectorLike | None = collector
        self._own_collector = collector is None
        self._keys: tuple[bytes, bytes] | None = None
        if settings.auth:
            assert settings.keys_file is not None
            keys = load_keys(settings.keys_file)
            primary = keys.primary.encode()
            # Always compare against two keys, so timing does not tell whether one is set.
            secondary = keys.secondary.encode() if keys.secondary else os.urandom(32).hex().encode()
            self._keys = (primary, secondary)
        self._onnx: OnnxModel | None = None
        self._script: EntryScriptModel | None = None
        self._runner: Runner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._max_in_flight = settings.max_concurrent_requests
        self._max_queue = settings.max_queue
        self._max_wait = settings.max_wait_ms / 1000.0
        self._timeout = settings.scoring_timeout_ms / 1000.0
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(6).hex()
        self._swagger = b"{}"
        self._version = b"{}"
        self._model_name = "model"
        self._model_version = "local"
        self._request_id_var: Any = None
        self._instance = os.environ.get("MLOPS_INSTANCE_TOKEN", "").encode()
        self.metrics.queue_depth = self._queue_depth

    # -- ASGI entry ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:
                    log.error("Start-up failed: %s", e)
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    # -- lifecycle ----------------------------------------------------------------------

    async def startup(self) -> None:
        """Load the model (in a thread), start the runner and the collector, then flip ready."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._load)
        assert self._runner is not None
        self._runner.start(self._loop)
        if self.collector is None and self.settings.collect_sink:
            self.collector = self._build_collector()
        if self.collector is not None:
            self.collector.start()
            self.metrics.collector_stats = self.collector.stats
            if self._own_collector:
                from mlops_scoring import collector as collector_module

                collector_module.set_current(self.collector)  # type: ignore[arg-type]
                self._request_id_var = collector_module.current_request_id
        self.ready = True
        log.info("Model loaded; ready")

    def _load(self) -> None:
        s = self.settings
        doc = version_document(s.service_name, s.model_dir, s.manifest)
        if doc["models"]:
            self._model_name = doc["models"][0]["name"]
            self._model_version = doc["models"][0]["version"]
        self._version = orjson.dumps(doc)
        if s.entry_script is not None:
            self._script = EntryScriptModel(s.entry_script, s.model_dir)
            self._script.load()
            self._runner = Runner(call=self._run_script, name="mlops-entry-script")
            inputs = outputs = None
        else:
            assert s.model_dir is not None
            path = find_onnx_file(s.model_dir)
            if path is None:
                raise ModelLoadError(f"no *.onnx file under {s.model_dir} and no --entry-script")
            self._onnx = model = OnnxModel(path, threads=s.ort_threads)
            if model.batchable and s.max_batch_size > 1:
                self._runner = Runner(
                    batch_call=stack_and_split(model.run),
                    max_batch_size=s.max_batch_size,
                    max_batch_delay_us=s.max_batch_delay_us,
                    on_batch=self.metrics.batch,
                    name="mlops-onnx",
                )
            else:
                self._runner = Runner(
                    call=lambda p: model.run(p[0]), on_batch=self.metrics.batch, name="mlops-onnx"
                )
            inputs, outputs = model.inputs, model.outputs
        self._swagger = orjson.dumps(openapi_document(s.service_name, inputs, outputs, s.auth))

    def _build_collector(self) -> CollectorLike:
        from mlops_scoring.collector import Collector

        s = self.settings
        collector = Collector(
            service=s.service_name,
            sink=s.collect_sink or "",
            sampling_rate=s.collect_sampling,
            azure_connection_string=os.environ.get("MLOPS_COLLECT_AZURE_CONNECTION_STRING"),
        )
        collector.set_model_versions({self._model_name: self._model_version})
        return collector

    def _run_script(self, payload: tuple[str, str]) -> Any:
        raw, request_id = payload
        assert self._script is not None
        var = self._request_id_var
        if var is None:
            return self._script.run(raw)
        token = var.set(request_id)
        try:
            return self._script.run(raw)
        finally:
            var.reset(token)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Drain: refuse new work, let in-flight and queued requests finish, close the collector."""
        self.draining = True
        self.ready = False
        deadline = time.monotonic() + (timeout if timeout is not None else self._max_wait + self._timeout)
        while (self._in_flight or self._waiters) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._runner is not None:
            await asyncio.to_thread(self._runner.stop, 5.0)
        if self.collector is not None:
            await asyncio.to_thread(self.collector.close, 10.0)
            if self._own_collector:
                from mlops_scoring import collector as collector_module

                collector_module.set_current(None)
        log.info("Drained and stopped")

    def _queue_depth(self) -> int:
        return len(self._waiters) + (self._runner.depth if self._runner is not None else 0)

    # -- HTTP ---------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        request_id = authorization = content_type = content_length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
            elif name == b"x-request-id" and 0 < len(value) <= 128 and value.isascii():
                request_id = value
        if request_id is None:
            request_id = f"{self._id_prefix}-{next(self._ids)}".encode()
        route = path if path in _ROUTES else "unmatched"
        extra: list[tuple[bytes, bytes]] = []
        ctype = _JSON
        try:
            allowed = _ROUTES.get(path)
            if allowed is None:
                raise NotFound(f"no route {path}; see /swagger.json")
            if scope["method"] != allowed:
                raise MethodNotAllowed(f"{path} takes {allowed}, not {scope['method']}", allow=allowed)
            if allowed == "POST":
                body = await self._score(
                    path, authorization, content_type, content_length, receive, request_id, started
                )
                status = 200
            else:
                status, body, ctype = self._get(path)
                if path == "/health/ready" and self._instance:
                    extra = [(b"x-mlops-instance", self._instance)]
        except ScoringError as e:
            status, body = e.status, error_body(e.code, e.message)
            extra = _error_headers(e)
        except Exception:
            log.exception("Unexpected error on %s (request %s)", path, request_id.decode())
            status, body = 500, error_body("internal_error", "the server failed; see its log")
        headers = [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id),
            *extra,
        ]
        if self.draining:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.record(route, status, time.perf_counter() - started)

    def _get(self, path: str) -> tuple[int, bytes, bytes]:
        if path == "/health/live":
            return 200, b'{"status":"alive"}', _JSON
        if path == "/health/ready":
            if self.ready:
                return 200, b'{"status":"ready"}', _JSON
            state = "draining" if self.draining else "loading"
            raise Unavailable(f"the service is {state}", code="not_ready")
        if path == "/metrics":
            return 200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8"
        if path == "/swagger.json":
            return 200, self._swagger, _JSON
        return 200, self._version, _JSON  # /version

    def _check_auth(self, authorization: bytes | None) -> None:
        keys = self._keys
        if keys is None:
            return
        if authorization is None:
            raise Unauthorized("send Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        # Compare against both keys every time: no early exit, constant time per key.
        ok = hmac.compare_digest(token, keys[0]) | hmac.compare_digest(token, keys[1])
        if not ok or scheme.lower() != b"bearer":
            raise Unauthorized("the key is wrong")

    async def _read_body(self, receive: Receive, content_length: bytes | None) -> bytes:
        limit = self.settings.max_body_bytes
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError as e:
                raise BadRequest("Content-Length is not a number") from e
            if declared > limit:
                raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
            return body
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _score(
        self,
        route: str,
        authorization: bytes | None,
        content_type: bytes | None,
        content_length: bytes | None,
        receive: Receive,
        request_id: bytes,
        started: float,
    ) -> bytes:
        if not self.ready:
            reason = "draining" if self.draining else "not_ready"
            self.metrics.reject(reason)
            raise Unavailable(f"the service is {reason.replace('_', ' ')}", code=reason)
        self._check_auth(authorization)
        script = self._script is not None
        if content_type is not None and not _acceptable(content_type, script):
            raise UnsupportedMediaType(f"send application/json, not {content_type.decode('latin-1')}")
        body = await self._read_body(receive, content_length)
        deadline = time.monotonic() + self._max_wait
        await self._admit(deadline)
        self.metrics.in_flight = self._in_flight
        try:
            if script:
                raw = core.decode_text(body)
                result = await self._await_job(self._runner.submit((raw, request_id.decode()), 1, deadline))  # type: ignore[union-attr]
                out = core.encode_result(route, result)
                doc: Any = raw
                outputs: Any = result
            else:
                specs = self._onnx.inputs  # type: ignore[union-attr]
                if len(body) <= _PARSE_INLINE_BYTES:
                    doc, feeds, rows = core.parse_onnx_request(route, body, specs)
                else:
                    doc, feeds, rows = await asyncio.to_thread(core.parse_onnx_request, route, body, specs)
                outputs = await self._await_job(self._runner.submit((feeds, rows), rows, deadline))  # type: ignore[union-attr]
                out = core.encode_outputs(route, outputs)
        finally:
            self._release()
        collector = self.collector
        if collector is not None and collector.should_sample():
            if script:
                with contextlib.suppress(orjson.JSONDecodeError):
                    doc = orjson.loads(doc)
            collector.collect(
                {
                    "request_id": request_id.decode(),
                    "ts": time.time(),
                    "model": self._model_name,
                    "version": self._model_version,
                    "inputs": doc,
                    "outputs": outputs,
                    "latency_ms": (time.perf_counter() - started) * 1000.0,
                }
            )
        return out

    async def _admit(self, deadline: float) -> None:
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            return
        if len(self._waiters) >= self._max_queue:
            self.metrics.reject("overloaded")
            raise Unavailable("too many requests; retry shortly", code="overloaded")
        loop = self._loop
        assert loop is not None
        slot: asyncio.Future[None] = loop.create_future()
        self._waiters.append(slot)
        timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), _expire_slot, slot)
        try:
            await slot  # the releasing request hands its slot over: _in_flight is unchanged
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self._release()
            raise
        except Unavailable:
            self.metrics.reject("queue_timeout")
            raise
        finally:
            timer.cancel()

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            slot = waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self._in_flight -= 1
        self.metrics.in_flight = self._in_flight

    async def _await_job(self, job: Job) -> Any:
        loop = self._loop
        assert loop is not None
        timer = loop.call_at(loop.time() + max(0.0, job.deadline - time.monotonic()), self._expire_job, job)
        try:
            return await job.future
        except ScoringError:
            raise
        except Exception as e:
            log.warning("The model raised %s: %s", type(e).__name__, e)
            raise RunFailed(f"the model raised {type(e).__name__}: {str(e)[:300]}") from e
        finally:
            timer.cancel()
            job.payload = None

    def _expire_job(self, job: Job) -> None:
        if job.future.done():
            return
        if not job.started:
            self.metrics.reject("queue_timeout")
            job.future.set_exception(
                Unavailable("the request waited too long for the model", code="queue_timeout")
            )
            return
        remaining = job.started + self._timeout - time.monotonic()
        if remaining > 0:
            assert self._loop is not None
            self._loop.call_later(remaining, self._expire_job, job)
            return
        job.future.set_exception(
            ScoringTimeout(f"the model did not answer within {self._timeout * 1000:.0f} ms")
        )


def _expire_slot(slot: asyncio.Future[None]) -> None:
    if not slot.done():
        slot.set_exception(Unavailable("the request waited too long for a free slot", code="queue_timeout"))


def _acceptable(content_type: bytes, script: bool) -> bool:
    media = content_type.partition(b";")[0].strip().lower()
    if media == _JSON or media.endswith(b"+json"):
        return True
    return script and media.startswith(b"text/")


def _error_headers(e: ScoringError) -> list[tuple[bytes, bytes]]:
    if isinstance(e, Unavailable):
        return [(b"retry-after", str(e.retry_after).encode())]
    if isinstance(e, Unauthorized):
        return [(b"www-authenticate", b"Bearer")]
    if isinstance(e, MethodNotAllowed):
        return [(b"allow", e.allow.encode())]
    if isinstance(e, PayloadTooLarge):
        return [(b"connection", b"close")]
    return []
