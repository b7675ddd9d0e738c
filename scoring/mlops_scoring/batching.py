"""Run model calls serially, gathering concurrent ONNX requests into batches.

Each request hands its job to a :class:`Runner` and awaits a future. Jobs run one batch at
a time, in arrival order (FIFO, so none starves), up to ``max_batch_size`` rows at once:
while a batch runs, new requests pile up, and the next batch takes them all. That greedy
rule batches under load and adds no delay to a lone request. ``max_batch_delay_us`` > 0
additionally holds the first request of an idle runner up to that long to let a batch fill.

Where a batch runs depends on its cost:

* **On the model thread** (the default, and always for entry scripts): the thread runs the
  batch and resolves the futures back on the loop with one ``call_soon_threadsafe``.
* **On the loop**, for a batch of at most ``inline_rows`` rows: the app sets that bound from
  the model's measured cost (``--inline-max-us``), so the loop runs a call only when it is
  cheaper than the hand-off. Handing a batch to the thread and back costs two thread
  wake-ups, which on a small VM cost more CPU and latency than a small MLP's call (see the
  package README). An idle runner then dispatches on the next loop tick rather than at once,
  so every request that arrived in the same tick shares one call. The bound is an estimate
  from synthetic inputs: a model whose cost depends on the values it gets should be served
  with ``--inline-max-us 0``.

Deadlines cost nothing per request: one sweeper timer, armed only while jobs are
outstanding, fails queued jobs past their deadline (503 ``queue_timeout``) and a running
batch past the scoring timeout (504 ``timeout``).

All bookkeeping (the pending deque, the busy flag) is touched on the loop thread only, so
no lock is needed.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from mlops_scoring.errors import ScoringTimeout, Unavailable

__all__ = ["Job", "Runner", "stack_and_split"]

log = logging.getLogger(__name__)


class Job:
    """One request's work: its payload, row count, deadline to start, and its future."""

    __slots__ = ("deadline", "future", "payload", "rows", "started")

    def __init__(self, payload: Any, rows: int, future: asyncio.Future[Any], deadline: float) -> None:
        self.payload = payload
        self.rows = rows
        self.future = future
        self.deadline = deadline
        self.started = 0.0  # monotonic time the model call began; 0 while queued


class Runner:
    """A serial worker thread, optionally batching.

    :param call: runs one job's payload (``batch_call`` is None) or is unused
    :param batch_call: runs a list of payloads stacked into one call and returns one result
        per payload, in order; when given, jobs are batched
    :param max_batch_size: most rows per batch (a single larger request still runs alone)
    :param max_batch_delay_us: how long an idle runner waits for a batch to fill
    :param on_batch: told each batch's job and row counts and whether it ran inline (metrics)
    :param inline_rows: batches of at most this many rows run on the loop (0: never)
    :param timeout: seconds a model call may run before its callers get a 504
    :param sweep_seconds: how often outstanding jobs are checked against their deadlines
    """

    def __init__(
        self,
        *,
        call: Callable[[Any], Any] | None = None,
        batch_call: Callable[[list[Any]], list[Any]] | None = None,
        max_batch_size: int = 1,
        max_batch_delay_us: int = 0,
        on_batch: Callable[[int, int, bool], None] | None = None,
        inline_rows: int = 0,
        timeout: float = 60.0,
        sweep_seconds: float = 0.02,
        name: str = "mlops-runner",
    ) -> None:
        if call is None and batch_call is None:
            raise ValueError("a Runner needs call or batch_call")
        self._call = call
        self._batch_call = batch_call
        self._max_rows = max_batch_size if batch_call is not None else 1
        self._delay = max_batch_delay_us / 1e6
        self._on_batch = on_batch
        self._inline_rows = inline_rows if batch_call is not None else min(inline_rows, 1)
        self._timeout = timeout
        self._sweep_every = sweep_seconds
        #: told the reason of every job the runner turns away (``queue_timeout``)
        self.on_reject: Callable[[str], None] | None = None
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._started = False

    @property
    def depth(self) -> int:
        """Return how many jobs wait for the thread."""
        return len(self._pending)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker thread; results are delivered on ``loop``."""
        self._loop = loop
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the thread finish its current job and exit."""
        if self._started:
            self._jobs.put(None)
            self._thread.join(timeout)

    def submit(self, payload: Any, rows: int, deadline: float) -> Job:
        """Queue a job and return it; await ``job.future`` (call on the loop thread)."""
        loop = self._loop
        assert loop is not None, "start() first"
        job = Job(payload, rows, loop.create_future(), deadline)
        self._pending.append(job)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)
        if not self._busy:
            if self._delay and len(self._pending) < self._max_rows:
                if self._timer is None:
                    self._timer = loop.call_later(self._delay, self._dispatch)
            elif not self._inline_rows:
                self._dispatch()
            elif self._soon is None:  # gather this tick's requests into one call
                self._soon = loop.call_soon(self._dispatch)
        return job

    def _reject(self, job: Job) -> None:
        if self.on_reject is not None:
            self.on_reject("queue_timeout")
        job.future.set_exception(
            Unavailable("the request waited too long for the model", code="queue_timeout")
        )

    def _dispatch(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy or not self._pending:
            return
        now = time.monotonic()
        batch: list[Job] = []
        rows = 0
        max_rows = self._max_rows
        pending = self._pending
        while pending:
            job = pending[0]
            if job.future.done():  # its caller went away
                pending.popleft()
                continue
            if job.deadline < now:
                pending.popleft()
                self._reject(job)
                continue
            if batch and rows + job.rows > max_rows:
                break
            pending.popleft()
            job.started = now
            batch.append(job)
            rows += job.rows
        if not batch:
            return
        self._busy = True
        if rows <= self._inline_rows:
            self._run_inline(batch)
            return
        self._running = batch
        self._jobs.put(batch)

    @property
    def inline_rows(self) -> int:
        """Return the most rows a batch may have to run on the loop (0: none)."""
        return self._inline_rows

    def _run_inline(self, batch: list[Job]) -> None:
        """Run a cheap batch here, on the loop thread, and deliver its results at once."""
        try:
            results = self._run(batch)
            error: BaseException | None = None
        except Exception as e:
            results, error = [], e
        self._deliver(batch, results, error, inline=True)

    def _run(self, batch: list[Job]) -> list[Any]:
        if self._batch_call is not None:
            return self._batch_call([j.payload for j in batch])
        assert self._call is not None
        return [self._call(batch[0].payload)]

    def _sweep(self) -> None:
        """Fail what outlived its deadline; re-arm while anything is outstanding."""
        self._sweeper = None
        now = time.monotonic()
        if self._pending:
            alive: deque[Job] = deque()
            for job in self._pending:
                if job.future.done():
                    continue
                if job.deadline < now:
                    self._reject(job)
                    continue
                alive.append(job)
            self._pending = alive
        running = self._running
        if running and running[0].started + self._timeout < now:
            error = f"the model did not answer within {self._timeout * 1000:.0f} ms"
            for job in running:
                if not job.future.done():
                    job.future.set_exception(ScoringTimeout(error))
        if self._pending or (self._busy and any(not j.future.done() for j in running)):
            assert self._loop is not None
            self._sweeper = self._loop.call_later(self._sweep_every, self._sweep)

    def _work(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            try:
                results = self._run(batch)
                error: BaseException | None = None
            except Exception as e:
                results, error = [], e
            try:
                loop.call_soon_threadsafe(self._deliver, batch, results, error)
            except RuntimeError:  # the loop closed under us: nobody waits any more
                return

    def _deliver(
        self, batch: list[Job], results: list[Any], error: BaseException | None, inline: bool = False
    ) -> None:
        self._busy = False
        self._running = []
        rows = 0
        for i, job in enumerate(batch):
            rows += job.rows
            job.payload = None
            fut = job.future
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(results[i])
        if self._on_batch is not None:
            self._on_batch(len(batch), rows, inline)
        if self._pending:
            if self._delay and len(self._pending) < self._max_rows and self._timer is None:
                self._timer = self._loop.call_later(self._delay, self._dispatch)  # type: ignore[union-attr]
            else:
                self._dispatch()


def stack_and_split(
    run: Callable[[dict[str, np.ndarray]], dict[str, Any]],
) -> Callable[[list[tuple[dict[str, np.ndarray], int]]], list[dict[str, Any]]]:
    """Return a batch call: concatenate every input along rows, run once, slice outputs back.

    Outputs whose first dimension equals the total row count are sliced per request;
    anything else (a scalar, a per-batch summary) is handed whole to every request.
    """

    def call(payloads: list[tuple[dict[str, np.ndarray], int]]) -> list[dict[str, Any]]:
        if len(payloads) == 1:
            return [run(payloads[0][0])]
        names = payloads[0][0].keys()
        feeds = {n: np.concatenate([p[0][n] for p in payloads]) for n in names}
        total = sum(p[1] for p in payloads)
        outputs = run(feeds)
        results: list[dict[str, Any]] = [{} for _ in payloads]
        for name, value in outputs.items():
            if len(value) == total if hasattr(value, "__len__") else False:
                start = 0
                for i, (_, rows) in enumerate(payloads):
                    results[i][name] = value[start : start + rows]
                    start += rows
            else:
                for r in results:
                    r[name] = value
        return results

    return call
