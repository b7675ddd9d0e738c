"""Prometheus metrics, kept cheap enough for the request path.

Counters and histogram buckets are plain ints updated on the event-loop thread (the GIL
makes each update atomic; nothing else writes them). A successful scoring request costs
one counter increment, one ``bisect`` on a precomputed bound list and two additions
(:meth:`Metrics.record_ok`). The text exposition is built only when ``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable

__all__ = ["Histogram", "Metrics"]

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """A Prometheus histogram with fixed buckets (counts stored per bucket, not cumulative)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        """Return the exposition lines (``labels`` like ``route="/score",``)."""
        out = []
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            out.append(f'{name}_bucket{{{labels}le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels}le="+Inf"}} {self.count}')
        sep = "{" + labels.rstrip(",") + "}" if labels else ""
        out.append(f"{name}_sum{sep} {self.sum:.9g}")
        out.append(f"{name}_count{sep} {self.count}")
        return out


class Metrics:
    """All the service's metrics; one instance per worker process."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch_requests = Histogram(BATCH_BUCKETS)
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.rejections: dict[str, int] = {}
        #: model calls by where they ran: the model thread, or inline on the loop
        self.calls = {"thread": 0, "inline": 0}
        self.in_flight: Callable[[], int] = lambda: 0
        self.queue_depth: Callable[[], int] = lambda: 0
        self.collector_stats: Callable[[], dict[str, int]] | None = None
        # The scoring routes' 200 counters and histograms exist up front: no lookups to create them.
        self._ok: dict[str, list[int]] = {}
        for route in ("/score", "/invocations"):
            self._ok[route] = [0]
            self.latency[route] = Histogram(LATENCY_BUCKETS)

    def record_ok(self, route: str, seconds: float) -> None:
        """Count one successful scoring request (``/score`` or ``/invocations``) and its latency."""
        self._ok[route][0] += 1
        hist = self.latency[route]
        hist.counts[bisect.bisect_left(hist.bounds, seconds)] += 1
        hist.sum += seconds
        hist.count += 1

    def record(self, route: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        key = (route, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def reject(self, reason: str) -> None:
        """Count one request turned away for load (overloaded, queue_timeout, draining)."""
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def batch(self, jobs: int, rows: int, inline: bool = False) -> None:
        """Record one model call: how many requests and rows it carried, and where it ran."""
        self.calls["inline" if inline else "thread"] += 1
        self.batch_requests.observe(jobs)
        self.batch_rows.observe(rows)

    def render(self) -> bytes:
        """Return the Prometheus text exposition."""
        p = "mlops_scoring_"
        lines = [
            f"# HELP {p}requests_total Requests answered, by route and status.",
            f"# TYPE {p}requests_total counter",
        ]
        counts = dict(self.requests)
        for route, (n,) in self._ok.items():
            if n:
                counts[(route, 200)] = counts.get((route, 200), 0) + n
        for (route, status), n in sorted(counts.items()):
            lines.append(f'{p}requests_total{{route="{route}",status="{status}"}} {n}')
        lines += [
            f"# HELP {p}request_duration_seconds Time from request start to response, by route.",
            f"# TYPE {p}request_duration_seconds histogram",
        ]
        for route, hist in sorted(self.latency.items()):
            if not hist.count:
                continue
            lines += hist.lines(f"{p}request_duration_seconds", f'route="{route}",')
        lines += [
            f"# HELP {p}batch_size_requests Requests per model call (dynamic batching).",
            f"# TYPE {p}batch_size_requests histogram",
            *self.batch_requests.lines(f"{p}batch_size_requests"),
            f"# HELP {p}batch_size_rows Rows per model call.",
            f"# TYPE {p}batch_size_rows histogram",
            *self.batch_rows.lines(f"{p}batch_size_rows"),
            f"# HELP {p}model_calls_total Model calls by where they ran: model thread or event loop.",
            f"# TYPE {p}model_calls_total counter",
            *(f'{p}model_calls_total{{where="{k}"}} {n}' for k, n in self.calls.items()),
            f"# HELP {p}queue_depth Requests waiting for a slot or for the model.",
            f"# TYPE {p}queue_depth gauge",
            f"{p}queue_depth {self.queue_depth()}",
            f"# HELP {p}in_flight Requests being processed.",
            f"# TYPE {p}in_flight gauge",
            f"{p}in_flight {self.in_flight()}",
            f"# HELP {p}rejections_total Requests turned away for load, by reason.",
            f"# TYPE {p}rejections_total counter",
        ]
        for reason, n in sorted(self.rejections.items()):
            lines.append(f'{p}rejections_total{{reason="{reason}"}} {n}')
        if self.collector_stats is not None:
            stats = self.collector_stats()
            lines += [
                f"# HELP {p}collector_records_total Data-collection records, by outcome.",
                f"# TYPE {p}collector_records_total counter",
            ]
            for key in ("collected", "written", "dropped"):
                lines.append(f'{p}collector_records_total{{outcome="{key}"}} {stats.get(key, 0)}')
            lines += [
                f"# HELP {p}collector_buffered Records held in memory, not yet written.",
                f"# TYPE {p}collector_buffered gauge",
                f"{p}collector_buffered {stats.get('buffered', 0)}",
                f"# HELP {p}collector_sink_errors_total Failed writes to the sink.",
                f"# TYPE {p}collector_sink_errors_total counter",
                f"{p}collector_sink_errors_total {stats.get('sink_errors', 0)}",
            ]
        lines += [
            f"# HELP {p}worker_pid The worker process answering this scrape.",
            f"# TYPE {p}worker_pid gauge",
            f"{p}worker_pid {os.getpid()}",
        ]
        return ("\n".join(lines) + "\n").encode()
