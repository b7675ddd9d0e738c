"""In-process onnxruntime: the limit no HTTP server can beat.

Run as a script in a peer venv: ``python inproc.py MODEL ROWS SECONDS``. One caller runs the
model on the same rows the HTTP peers receive, back to back, with onnxruntime's default
threading (one intra-op thread per core). Prints one JSON line with calls/s, rows/s, p50 and
p99 latency, CPU µs per call and peak RSS, measured the same way as for the servers.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    model, rows, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with open(sys.argv[4]) as f:
        x = np.asarray(json.load(f)["data"], dtype=np.float32)
    assert len(x) == rows
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x}
    warm_until = time.perf_counter() + min(2.0, seconds / 3)
    while time.perf_counter() < warm_until:
        session.run(None, feeds)
    latencies = []
    t0 = time.perf_counter()
    cpu0 = os.times()
    deadline = t0 + seconds
    now = t0
    while now < deadline:
        session.run(None, feeds)
        t = time.perf_counter()
        latencies.append(t - now)
        now = t
    cpu1 = os.times()
    elapsed = now - t0
    lat = np.sort(np.asarray(latencies))
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    with open("/proc/self/status") as f:
        hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
    calls = len(latencies)
    print(
        json.dumps(
            {
                "requests": calls,
                "seconds": elapsed,
                "req_s": calls / elapsed,
                "rows_s": calls * rows / elapsed,
                "p50_ms": float(lat[int(0.50 * (calls - 1))]) * 1000,
                "p99_ms": float(lat[int(0.99 * (calls - 1))]) * 1000,
                "cpu_us_per_req": cpu * 1e6 / calls,
                "rss_peak_mib": hwm / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
