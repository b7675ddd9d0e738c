"""The scoring app: a tiny router around the core, with auth, limits, batching and metrics.

It speaks two server interfaces with one request path between them:

* **RSGI** (granian's native interface, what ``mlops-serve`` serves): ``__rsgi_init__``
  loads the model, ``__rsgi__`` answers a request, ``__rsgi_del__`` drains. Granian hands
  the handler a scope with lazy Rust-side headers and takes the response as one
  ``response_bytes`` call, so a request costs far less Python than through ASGI.
* **ASGI** (``__call__``, with the lifespan protocol), for other servers and for tools.

No web framework sits on the request path: a dict maps the path to a handler, the four
headers that matter are looked up by name, response headers are precomputed tuples, and
every error goes through one map (:mod:`mlops_scoring.errors`) to the same JSON body. The
model loads once at start-up, in a thread; only then does ``/health/ready`` answer 200.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import itertools
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import orjson

from mlops_scoring import core
from mlops_scoring.batching import Runner, stack_and_split
from mlops_scoring.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RunFailed,
    ScoringError,
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
Headers = list[tuple[str, str]]

_JSON = "application/json"
_CT_JSON = ("content-type", _JSON)
_CT_METRICS = ("content-type", "text/plain; version=0.0.4; charset=utf-8")
_CLOSE = ("connection", "close")
_SCORING_ROUTES = frozenset({"/score", "/invocations"})
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
#: Young-generation GC threshold while serving: requests allocate many short-lived
#: containers, and the default (700) runs a collection every few requests.
_GC_GEN0_THRESHOLD = 50_000


class CollectorLike(Protocol):
    """What the server needs of a data collector (:class:`mlops_scoring.collector.Collector`)."""

    def start(self) -> None: ...
    def should_sample(self) -> bool: ...
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
    ) -> None: ...
    def close(self, timeout: float = 10.0) -> None: ...
    def stats(self) -> dict[str, int]: ...


def create_app(settings: Settings, *, collector: CollectorLike | None = None) -> ScoringApp:
    """Build the scoring app; the model loads when the server runs the start-up.

    :param settings: the service's settings
    :param collector: a collector to use instead of one built from ``settings.collect_sink``
    """
    return ScoringApp(settings, collector=collector)


class ScoringApp:
    """The scoring application, callable as RSGI and as ASGI (see :func:`create_app`)."""

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
        self._max_body = settings.max_body_bytes
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(6).hex() + "-"
        self._swagger = b"{}"
        self._version = b"{}"
        self._model_name = "model"
        self._model_version = "local"
        self._request_id_var: Any = None
        self._instance = os.environ.get("MLOPS_INSTANCE_TOKEN", "")
        self.metrics.queue_depth = self._queue_depth
        self.metrics.in_flight = lambda: self._in_flight

    # -- RSGI entry (granian) -----------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Load the model before granian serves; a failure stops the worker (exit 1)."""
        try:
            loop.run_until_complete(self.startup())
        except Exception as e:
            log.error("Start-up failed: %s", e)
            sys.exit(1)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drain after granian stopped accepting: in-flight work, the runner, the collector."""
        loop.run_until_complete(self.shutdown())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        """Answer one RSGI request."""
        started = time.perf_counter()
        path: str = scope.path
        headers = scope.headers
        request_id: str | None = headers.get("x-request-id")
        if request_id is None or not (0 < len(request_id) <= 128 and request_id.isascii()):
            request_id = self._id_prefix + str(next(self._ids))
        if path in _SCORING_ROUTES and scope.method == "POST":
            try:
                body = await self._score(
                    path,
                    headers.get("authorization"),
                    headers.get("content-type"),
                    headers.get("content-length"),
                    self._read_rsgi,
                    proto,
                    request_id,
                    started,
                )
            except Exception as e:
                status, body, extra = self._error(e, path, request_id)
                out = [_CT_JSON, ("x-request-id", request_id), *extra]
                if self.draining:
                    out.append(_CLOSE)
                proto.response_bytes(status, out, body)
                self.metrics.record(path, status, time.perf_counter() - started)
                return
            proto.response_bytes(
                200,
                [_CT_JSON, ("x-request-id", request_id), _CLOSE]
                if self.draining
                else [_CT_JSON, ("x-request-id", request_id)],
                body,
            )
            self.metrics.record_ok(path, time.perf_counter() - started)
            return
        status, out, body = self._other(path, scope.method, request_id)
        proto.response_bytes(status, out, body)
        self.metrics.record(path if path in _ROUTES else "unmatched", status, time.perf_counter() - started)

    async def _read_rsgi(self, proto: Any, content_length: str | None) -> bytes:
        limit = self._max_body
        if content_length is not None:
            self._check_declared(content_length)
            body: bytes = await proto()  # the server holds the body to its declared length
            return body
        chunks: list[bytes] = []
        size = 0
        async for chunk in proto:  # chunked: count as it streams in
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- ASGI entry ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._asgi_http(scope, receive, send)
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

    async def _asgi_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id")
        if request_id is None or not (0 < len(request_id) <= 128 and request_id.isascii()):
            request_id = self._id_prefix + str(next(self._ids))
        method: str = scope["method"]
        if path in _SCORING_ROUTES and method == "POST":
            try:
                body = await self._score(
                    path,
                    headers.get("authorization"),
                    headers.get("content-type"),
                    headers.get("content-length"),
                    self._read_asgi,
                    receive,
                    request_id,
                    started,
                )
                status, out = 200, [_CT_JSON, ("x-request-id", request_id)]
            except Exception as e:
                status, body, extra = self._error(e, path, request_id)
                out = [_CT_JSON, ("x-request-id", request_id), *extra]
            if self.draining:
                out.append(_CLOSE)
            route = path
        else:
            status, out, body = self._other(path, method, request_id)
            route = path if path in _ROUTES else "unmatched"
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        self.metrics.record(route, status, time.perf_counter() - started)

    async def _read_asgi(self, receive: Receive, content_length: str | None) -> bytes:
        limit = self._max_body
        if content_length is not None:
            self._check_declared(content_length)
        chunks: list[bytes] = []
        size = 0
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
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- lifecycle ----------------------------------------------------------------------

    async def startup(self) -> None:
        """Load the model (in a thread), start the runner and the collector, then flip ready."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._load)
        assert self._runner is not None
        self._runner.start(self._loop)
        if self._onnx is not None and self._runner.inline_rows:
            self._onnx.warm_up()  # the loop's thread will run calls: pay its first-call cost now
        if self.collector is None and self.settings.collect_sink:
            self.collector = self._build_collector()
        if self.collector is not None:
            self.collector.start()
            self.metrics.collector_stats = self.collector.stats
            if self._own_collector:
                from mlops_scoring import collector as collector_module

                collector_module.set_current(self.collector)  # type: ignore[arg-type]
                self._request_id_var = collector_module.current_request_id
        # Everything loaded so far lives as long as the process: move it out of the
        # collector's sight, and collect young objects less often (fewer pauses in the tail).
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(_GC_GEN0_THRESHOLD, gen1, gen2)
        self.ready = True
        log.info("Model loaded; ready")

    def _load(self) -> None:
        s = self.settings
        doc = version_document(s.service_name, s.model_dir, s.manifest)
        if doc["models"]:
            self._model_name = doc["models"][0]["name"]
            self._model_version = doc["models"][0]["version"]
        self._version = orjson.dumps(doc)
        timeout = s.scoring_timeout_ms / 1000.0
        sweep = min(0.1, max(0.005, min(self._max_wait, timeout) / 20))
        if s.entry_script is not None:
            self._script = EntryScriptModel(s.entry_script, s.model_dir)
            self._script.load()
            self._runner = Runner(
                call=self._run_script, timeout=timeout, sweep_seconds=sweep, name="mlops-entry-script"
            )
            inputs = outputs = None
        else:
            assert s.model_dir is not None
            path = find_onnx_file(s.model_dir)
            if path is None:
                raise ModelLoadError(f"no *.onnx file under {s.model_dir} and no --entry-script")
            self._onnx = model = OnnxModel(path, threads=s.ort_threads)
            log.info(
                "Model %s: %s, onnxruntime intra-op threads %d",
                path.name,
                f"{model.row_cost_us:.0f} µs per row" if model.row_cost_us is not None else "cost unknown",
                model.threads,
            )
            batching = model.batchable and s.max_batch_size > 1
            inline_rows = _inline_rows(model, s.inline_max_us, s.max_batch_size if batching else 1)
            self._runner = Runner(
                batch_call=stack_and_split(model.run) if batching else None,
                call=None if batching else (lambda p: model.run(p[0])),
                max_batch_size=s.max_batch_size,
                max_batch_delay_us=s.max_batch_delay_us,
                on_batch=self.metrics.batch,
                inline_rows=inline_rows,
                timeout=timeout,
                sweep_seconds=sweep,
                name="mlops-onnx",
            )
            if inline_rows:
                log.info(
                    "Calls of up to %d row(s) (estimated under %d µs) run on the event loop; "
                    "larger ones on the model thread",
                    inline_rows,
                    s.inline_max_us,
                )
            inputs, outputs = model.inputs, model.outputs
        self._runner.on_reject = self.metrics.reject
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
        budget = self._max_wait + self.settings.scoring_timeout_ms / 1000.0
        deadline = time.monotonic() + (timeout if timeout is not None else budget)
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

    # -- the request path, whatever the interface ---------------------------------------

    def _other(self, path: str, method: str, request_id: str) -> tuple[int, Headers, bytes]:
        """Answer every request that is not a scoring POST: GET routes and errors."""
        try:
            allowed = _ROUTES.get(path)
            if allowed is None:
                raise NotFound(f"no route {path}; see /swagger.json")
            if method != allowed:
                raise MethodNotAllowed(f"{path} takes {allowed}, not {method}", allow=allowed)
            status, body, ctype = self._get(path)
            out = [ctype, ("x-request-id", request_id)]
            if path == "/health/ready" and self._instance:
                out.append(("x-mlops-instance", self._instance))
        except Exception as e:
            status, body, extra = self._error(e, path, request_id)
            out = [_CT_JSON, ("x-request-id", request_id), *extra]
        if self.draining:
            out.append(_CLOSE)
        return status, out, body

    def _get(self, path: str) -> tuple[int, bytes, tuple[str, str]]:
        if path == "/health/live":
            return 200, b'{"status":"alive"}', _CT_JSON
        if path == "/health/ready":
            if self.ready:
                return 200, b'{"status":"ready"}', _CT_JSON
            state = "draining" if self.draining else "loading"
            raise Unavailable(f"the service is {state}", code="not_ready")
        if path == "/metrics":
            return 200, self.metrics.render(), _CT_METRICS
        if path == "/swagger.json":
            return 200, self._swagger, _CT_JSON
        return 200, self._version, _CT_JSON  # /version

    @staticmethod
    def _error(e: Exception, path: str, request_id: str) -> tuple[int, bytes, Headers]:
        if isinstance(e, ScoringError):
            return e.status, error_body(e.code, e.message), _error_headers(e)
        log.error("Unexpected error on %s (request %s)", path, request_id, exc_info=e)
        return 500, error_body("internal_error", "the server failed; see its log"), []

    def _check_auth(self, authorization: str | None) -> None:
        keys = self._keys
        if keys is None:
            return
        if authorization is None:
            raise Unauthorized("send Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        raw = token.strip().encode("utf-8", "surrogateescape")
        # Compare against both keys every time: no early exit, constant time per key.
        ok = hmac.compare_digest(raw, keys[0]) | hmac.compare_digest(raw, keys[1])
        if not ok or scheme.lower() != "bearer":
            raise Unauthorized("the key is wrong")

    def _check_declared(self, content_length: str) -> None:
        try:
            declared = int(content_length)
        except ValueError as e:
            raise BadRequest("Content-Length is not a number") from e
        if declared > self._max_body:
            raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {self._max_body}")

    async def _score(
        self,
        route: str,
        authorization: str | None,
        content_type: str | None,
        content_length: str | None,
        read: Callable[[Any, str | None], Awaitable[bytes]],
        source: Any,
        request_id: str,
        started: float,
    ) -> bytes:
        if not self.ready:
            reason = "draining" if self.draining else "not_ready"
            self.metrics.reject(reason)
            raise Unavailable(f"the service is {reason.replace('_', ' ')}", code=reason)
        self._check_auth(authorization)
        script = self._script is not None
        if content_type is not None and content_type != _JSON and not _acceptable(content_type, script):
            raise UnsupportedMediaType(f"send application/json, not {content_type}")
        body = await read(source, content_length)
        deadline = time.monotonic() + self._max_wait
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
        else:
            await self._admit(deadline)
        runner = self._runner
        assert runner is not None
        try:
            if script:
                raw = core.decode_text(body)
                result = await self._await(runner.submit((raw, request_id), 1, deadline).future)
                out = outputs = core.encode_result(route, result)
            else:
                specs = self._onnx.inputs  # type: ignore[union-attr]
                if len(body) <= _PARSE_INLINE_BYTES:
                    feeds, rows = core.parse_onnx_request(route, body, specs)
                else:
                    feeds, rows = await asyncio.to_thread(core.parse_onnx_request, route, body, specs)
                result = await self._await(runner.submit((feeds, rows), rows, deadline).future)
                outputs = core.encode_outputs(result)
                out = core.wrap_predictions(outputs) if route == "/invocations" else outputs
        finally:
            self._release()
        collector = self.collector
        if collector is not None and collector.should_sample():
            if script and route == "/invocations":
                outputs = core.encode_result("/score", result)
            collector.collect_scored(
                request_id,
                time.time(),
                self._model_name,
                self._model_version,
                body,
                outputs,
                (time.perf_counter() - started) * 1000.0,
                not script,
            )
        return out

    async def _await(self, future: asyncio.Future[Any]) -> Any:
        try:
            return await future
        except ScoringError:
            raise
        except Exception as e:
            log.warning("The model raised %s: %s", type(e).__name__, e)
            raise RunFailed(f"the model raised {type(e).__name__}: {str(e)[:300]}") from e

    async def _admit(self, deadline: float) -> None:
        """Wait for a slot (all are taken); past the queue bound or the deadline, 503."""
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


def _inline_rows(model: OnnxModel, budget_us: int, max_rows: int) -> int:
    """Return the most rows whose estimated call cost fits ``budget_us`` (0: none, or unknown)."""
    if budget_us <= 0 or model.threads > 1:  # several intra-op threads: compute-bound
        return 0
    one, per_row = model.one_row_us, model.row_cost_us
    if one is None or per_row is None or one > budget_us:
        return 0
    if not model.batchable:
        return 1
    extra = int((budget_us - one) / per_row) if per_row > 0 else max_rows
    return max(1, min(max_rows, 1 + extra))


def _expire_slot(slot: asyncio.Future[None]) -> None:
    if not slot.done():
        slot.set_exception(Unavailable("the request waited too long for a free slot", code="queue_timeout"))


def _acceptable(content_type: str, script: bool) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    if media == _JSON or media.endswith("+json"):
        return True
    return script and media.startswith("text/")


def _error_headers(e: ScoringError) -> Headers:
    if isinstance(e, Unavailable):
        return [("retry-after", str(e.retry_after))]
    if isinstance(e, Unauthorized):
        return [("www-authenticate", "Bearer")]
    if isinstance(e, MethodNotAllowed):
        return [("allow", e.allow)]
    if isinstance(e, PayloadTooLarge):
        return [_CLOSE]
    return []
