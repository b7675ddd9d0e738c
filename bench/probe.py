"""Quick probe of our own server while tuning it: a few wrk cells, no peers, no report.

``bench/probe.py [--model digits|wide] [--rows 1] [--conc 64,1] [--duration 5] [-- FLAGS...]``
starts ``mlops-serve`` from the current interpreter (the repo's editable install, so edits
take effect without reinstalling), loads it with wrk cell by cell and prints one line per
cell: req/s, rows/s, p50, p99, p99/p50, server CPU µs per request, non-2xx. ``--collect``
adds a 100 % data-collection sink and reports the records written after SIGTERM.
``--inproc`` also measures in-process onnxruntime at the same payload (for the ratio).
It needs the benchmark models (``bench/run.py`` builds them under ``.bench/models``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import ProcTree, loadavg, run_wrk
from models import payload_path, prepare_models

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / ".bench" / "models"


def main(argv: list[str] | None = None) -> int:
    """Run the probe; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits", choices=["digits", "wide"])
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--conc", default="64,1")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--collect", action="store_true")
    p.add_argument("--inproc", action="store_true")
    p.add_argument("flags", nargs="*", help="extra mlops-serve flags (after --)")
    args = p.parse_args(argv)
    models = prepare_models(MODELS, log=lambda m: None)
    model = models[args.model]
    body = payload_path(MODELS, "score", args.rows)
    work = Path(tempfile.mkdtemp(prefix="probe-"))
    key = os.urandom(16).hex()
    (work / "keys.json").write_text(json.dumps({"primary_key": key, "secondary_key": os.urandom(16).hex()}))
    port = 20000 + os.getpid() % 20000
    cmd = [
        sys.executable,
        "-m",
        "mlops_scoring",
        "--model-dir",
        str(model.onnx_dir),
        "--keys-file",
        str(work / "keys.json"),
        "--port",
        str(port),
        *args.flags,
    ]
    if args.collect:
        cmd += ["--collect-sink", str(work / "collected")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    with open(work / "log", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Listening"):
            break
    else:
        print("did not start:", (work / "log").read_text()[-2000:])
        proc.kill()
        return 1
    url = f"http://127.0.0.1:{port}/score"
    tree = ProcTree(proc.pid)
    print(f"load before: {loadavg()}  flags: {' '.join(args.flags)}{' +collect' if args.collect else ''}")
    total = 0
    try:
        for conc in [int(c) for c in args.conc.split(",")]:
            if args.warmup:
                run_wrk(url, body, rows=args.rows, connections=conc, seconds=args.warmup, key=key)
            r = run_wrk(
                url, body, rows=args.rows, connections=conc, seconds=args.duration, key=key, tree=tree
            )
            total += r.requests
            ratio = r.p99_ms / r.p50_ms if r.p50_ms else 0
            print(
                f"{args.model} rows={args.rows} c={conc}: {r.req_s:,.0f} req/s {r.rows_s:,.0f} rows/s "
                f"p50 {r.p50_ms:.3f} ms p99 {r.p99_ms:.3f} ms (x{ratio:.1f}) "
                f"cpu {r.cpu_us_per_req or 0:.0f} us/req non-2xx {r.non_2xx} {r.error}",
                flush=True,
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    if args.collect:
        n = sum(f.read_bytes().count(b"\n") for f in (work / "collected").rglob("*.jsonl"))
        print(f"exit {code}; collected records on disk: {n}")
    if args.inproc:
        out = (
            subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).parent / "inproc.py"),
                    str(model.onnx_path),
                    str(args.rows),
                    str(args.duration),
                    str(body),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        d = json.loads(out)
        print(f"inproc rows={args.rows}: {d['rows_s']:,.0f} rows/s p50 {d['p50_ms']:.3f} ms")
    print(f"load after: {loadavg()}")
    time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
