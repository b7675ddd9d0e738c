"""Drive load with ``wrk`` and watch the server's process tree through ``/proc``.

CPU per request is the growth of utime + stime summed over the server's process tree (the
process we started and all its descendants, so worker processes count) while wrk runs,
divided by the requests wrk completed. RSS is the largest sum of the tree's resident sets
seen by a sampler thread (every 0.2 s) during the cell; with several worker processes,
shared pages count once per process, so it over-states a little.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CellResult", "ProcTree", "loadavg", "run_wrk"]

LUA = Path(__file__).resolve().parent / "post.lua"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def loadavg() -> list[float]:
    """Return the 1, 5 and 15 minute load averages."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


class ProcTree:
    """The process ``root_pid`` and its descendants, read from ``/proc``."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid

    def pids(self) -> list[int]:
        """Return the root and every descendant alive now."""
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            stat = _read_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry.name))
        found, todo = [], [self.root_pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def cpu_seconds(self) -> float:
        """Return user + system CPU seconds used so far by the live tree."""
        total = 0
        for pid in self.pids():
            stat = _read_stat(pid)
            if stat is not None:
                total += stat[2]
        return total / _TICK

    def rss_bytes(self) -> int:
        """Return the summed resident set of the live tree."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * _PAGE
            except (OSError, IndexError, ValueError):
                pass
        return total

    def alive(self) -> bool:
        """Return whether the root process still runs (and is not a zombie)."""
        stat = _read_stat(self.root_pid)
        return stat is not None and stat[0] != "Z"


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """Return ``(state, ppid, utime + stime ticks)`` of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[11]) + int(fields[12])


@dataclass
class CellResult:
    """What one wrk run measured (one cell, one repetition)."""

    requests: int = 0
    seconds: float = 0.0
    req_s: float = 0.0
    rows_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: int = 0
    cpu_us_per_req: float | None = None
    rss_peak_mib: float | None = None
    rss_start_mib: float | None = None
    rss_trace_mib: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    loadavg_before: list[float] = field(default_factory=list)
    alive_after: bool = True
    error: str = ""


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_wrk(
    url: str,
    body_file: Path,
    *,
    rows: int,
    connections: int,
    seconds: float,
    key: str | None = None,
    tree: ProcTree | None = None,
    count_statuses: bool = False,
    timeout_s: int = 10,
) -> CellResult:
    """Run wrk against ``url`` and return what it and ``/proc`` saw.

    :param url: the scoring URL (always on 127.0.0.1)
    :param body_file: the JSON body to POST
    :param rows: rows per request (for rows/s)
    :param connections: concurrency (open connections, each with one request in flight)
    :param seconds: how long to load
    :param key: a bearer key to send, if the server wants one
    :param tree: the server's process tree, for CPU and RSS; None for no server figures
    :param count_statuses: count every status code (slower; for the overload scenario)
    :param timeout_s: wrk's per-request timeout
    """
    threads = 1 if connections < 16 else 2
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        f"{timeout_s}s",
        "-s",
        str(LUA),
        url,
        "--",
        str(body_file),
        key or "-",
    ]
    if count_statuses:
        cmd.append("count-statuses")
    result = CellResult(loadavg_before=loadavg())
    stop = threading.Event()
    trace: list[int] = []

    def sample() -> None:
        while not stop.is_set():
            trace.append(tree.rss_bytes())  # type: ignore[union-attr]
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True) if tree is not None else None
    cpu0 = tree.cpu_seconds() if tree is not None else 0.0
    if tree is not None:
        result.rss_start_mib = tree.rss_bytes() / 2**20
    if sampler is not None:
        sampler.start()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=seconds + timeout_s + 30,
            preexec_fn=_raise_nofile,
            check=False,
        )
    finally:
        stop.set()
        if sampler is not None:
            sampler.join()
    cpu1 = tree.cpu_seconds() if tree is not None else 0.0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        result.error = f"wrk exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"
        return result
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = data["errors"]
    result.requests = data["requests"]
    result.seconds = data["duration_us"] / 1e6
    result.req_s = result.requests / result.seconds if result.seconds else 0.0
    result.rows_s = result.req_s * rows
    result.p50_ms = data["p50_us"] / 1000
    result.p99_ms = data["p99_us"] / 1000
    result.non_2xx = errors["status"]
    result.socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    result.statuses = data.get("statuses") or {}
    if count_statuses:
        result.non_2xx = sum(n for code, n in result.statuses.items() if not code.startswith("2"))
    if tree is not None:
        if result.requests:
            result.cpu_us_per_req = (cpu1 - cpu0) * 1e6 / result.requests
        if trace:
            result.rss_peak_mib = max(trace) / 2**20
            result.rss_trace_mib = [round(x / 2**20, 1) for x in trace]
        result.alive_after = tree.alive()
    return result
