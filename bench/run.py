"""Serving benchmark: our scoring service against MLflow's and Azure ML's, and onnxruntime.

``make bench`` (or ``.venv/bin/python bench/run.py``) does everything from a fresh clone:
builds the two models, makes one venv per peer under ``.bench/venvs/`` (once), then for each
repetition starts the servers, loads them with ``wrk`` cell by cell, the peers alternating
within the repetition, and stops them. It writes ``docs/benchmarks.md``,
``docs/benchmarks.png`` and the raw figures to ``.bench/results.json``.

``--quick`` is a smoke run (1 repetition, 3 s cells, fewer cells). A peer that cannot be
installed or started is reported with the reason; the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from envs import PeerEnv, prepare_env
from load import CellResult, loadavg, run_wrk
from models import BenchModel, payload_path, prepare_models, sample_rows
from peers import VARIANTS, Server, start_server, stop_all, stop_server

REPO = Path(__file__).resolve().parent.parent
BENCH_HOME = REPO / ".bench"
HTTP_PEERS = ("ours", "mlflow", "azureml")
ALL_PEERS = (*HTTP_PEERS, "inproc")
SCENARIOS = ("compute", "overload", "collect", "workers", "thread")
OVERLOAD_CONNECTIONS = 512


def log(msg: str) -> None:
    """Print a progress line with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, 3 s cells, fewer cells")
    p.add_argument("--peers", default=",".join(ALL_PEERS), help=f"comma list of {', '.join(ALL_PEERS)}")
    p.add_argument("--duration", type=float, help="seconds per measured cell (default 10; 3 with --quick)")
    p.add_argument(
        "--warmup", type=float, help="seconds of warm-up before each cell (default 2; 1 with --quick)"
    )
    p.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    p.add_argument("--concurrency", help="comma list of concurrencies for the main grid (default 1,16,64)")
    p.add_argument("--rows", help="comma list of rows per request for the main grid (default 1,32)")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"extra scenarios, comma list of {', '.join(SCENARIOS)} or 'none'",
    )
    p.add_argument("--no-report", action="store_true", help="do not rewrite docs/ (results.json only)")
    args = p.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.reps = args.reps or (1 if args.quick else 3)
    default_conc = "1,64" if args.quick else "1,16,64"
    args.concurrency = [int(x) for x in (args.concurrency or default_conc).split(",")]
    args.rows = [int(x) for x in (args.rows or "1,32").split(",")]
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    unknown = set(args.peers) - set(ALL_PEERS)
    if unknown:
        p.error(f"--peers: unknown {', '.join(sorted(unknown))}")
    args.scenarios = [] if args.scenarios == "none" else [x.strip() for x in args.scenarios.split(",")]
    if set(args.scenarios) - set(SCENARIOS):
        p.error(f"--scenarios: pick from {', '.join(SCENARIOS)}")
    if args.reps < 1 or args.duration < 1 or not (1 <= args.reps <= 20 and args.duration <= 120):
        p.error("--reps must be 1..20 and --duration 1..120 s")
    return args


def ensure_wrk() -> None:
    """Install wrk from the Debian archive when it is missing (the benchmark needs it)."""
    if shutil.which("wrk"):
        return
    log("wrk not found: installing the Debian package")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    install = [*sudo, "apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, check=False, capture_output=True, timeout=600).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=False, capture_output=True, timeout=600)
        subprocess.run(install, check=True, capture_output=True, timeout=600)


def machine() -> dict[str, Any]:
    """Describe the machine: CPU, cores, memory, kernel, load."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration):
        pass
    wrk_version = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version[0] if wrk_version else "",
        "loadavg_start": loadavg(),
    }


def plan_groups(args: argparse.Namespace, peers: list[str]) -> list[dict[str, Any]]:
    """Return the server groups of one repetition: which variants run which cells.

    Within a group every variant's server runs at once (idle while another is measured),
    and the cells are visited slot by slot, each slot measuring every variant in turn.
    """
    http = [p for p in HTTP_PEERS if p in peers]
    groups: list[dict[str, Any]] = []
    digits_slots = []
    for rows in args.rows:
        first = True
        for conc in args.concurrency:
            if args.quick and rows == 32 and conc != max(args.concurrency):
                continue
            variants = list(http)
            if "inproc" in peers and first:  # in process has no concurrency: once per payload
                variants.append("inproc")
            first = False
            if rows == 1 and "ours" in peers and "thread" in args.scenarios:
                variants.append("ours-thread")
            if rows == 1 and conc == 64 and "ours" in peers:
                if "collect" in args.scenarios:
                    variants.append("ours-collect")
                if "workers" in args.scenarios:
                    variants.append("ours-w2")
            digits_slots.append({"rows": rows, "concurrency": conc, "variants": variants})
    groups.append({"model": "digits", "slots": digits_slots})
    if "compute" in args.scenarios:
        variants = list(http) + (["inproc"] if "inproc" in peers else [])
        groups.append({"model": "wide", "slots": [{"rows": 32, "concurrency": 64, "variants": variants}]})
    if "overload" in args.scenarios and "ours" in peers:
        groups.append(
            {
                "model": "digits",
                "slots": [
                    {
                        "rows": 1,
                        "concurrency": OVERLOAD_CONNECTIONS,
                        "variants": ["ours-overload"],
                        "overload": True,
                    }
                ],
            }
        )
    return groups


def expected_labels(model: BenchModel) -> list[int]:
    """Return in-process onnxruntime's labels for the 32-row payload (what every peer must answer)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    return [int(x) for x in sess.run(["label"], {"input": sample_rows(32)})[0]]


def run_inproc(env: PeerEnv, model: BenchModel, rows: int, seconds: float) -> CellResult:
    """Measure onnxruntime in a process of its own (the ``ours`` venv's onnxruntime)."""
    result = CellResult(loadavg_before=loadavg())
    body = payload_path(BENCH_HOME / "models", "score", rows)
    proc = subprocess.run(
        [
            str(env.bin("python")),
            str(Path(__file__).parent / "inproc.py"),
            str(model.onnx_path),
            str(rows),
            str(seconds),
            str(body),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    if proc.returncode != 0:
        result.error = f"inproc exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
        return result
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    for k, v in data.items():
        setattr(result, k, v)
    return result


def count_collected(server: Server) -> int:
    """Count the records our collector wrote (after the server stopped and flushed)."""
    total = 0
    if server.workdir is None:
        return 0
    for part in (server.workdir / "collected").rglob("*.jsonl"):
        with open(part, "rb") as f:
            total += sum(1 for _ in f)
    return total


def run_group(
    group: dict[str, Any],
    rep: int,
    args: argparse.Namespace,
    envs: dict[str, PeerEnv],
    models: dict[str, BenchModel],
    unavailable: dict[str, str],
    records: list[dict[str, Any]],
    extras: dict[str, Any],
) -> None:
    """Start the group's servers, measure its cells with the peers alternating, stop them."""
    model = models[group["model"]]
    names = list(dict.fromkeys(v for s in group["slots"] for v in s["variants"]))
    servers: dict[str, Server] = {}
    expected = expected_labels(model)
    try:
        for name in names:
            if name == "inproc" or name in unavailable:
                continue
            variant = VARIANTS[name]
            env = envs.get(variant.env)
            if env is None or not env.ok:
                unavailable[name] = env.reason if env else "not prepared"
                continue
            log(f"  start {name} on {model.name}")
            try:
                servers[name] = start_server(
                    variant, env, model, BENCH_HOME / "models", BENCH_HOME / "logs", expected
                )
            except RuntimeError as e:
                unavailable[name] = f"did not start: {e}"
                log(f"  {name} unavailable: {e}")
                continue
            server = servers[name]
            extras.setdefault("servers", []).append(
                {
                    "variant": name,
                    "model": model.name,
                    "rep": rep,
                    "start_seconds": round(server.start_seconds, 2),
                    "agrees_with_onnxruntime": server.agrees,
                }
            )
        for slot in group["slots"]:
            order = list(slot["variants"])
            shift = rep % len(order)
            order = order[shift:] + order[:shift]  # alternate who goes first in each repetition
            for name in order:
                if name != "inproc" and name not in servers:
                    continue
                rows, conc = slot["rows"], slot["concurrency"]
                if name == "inproc":
                    if "ours" not in envs or not envs["ours"].ok:
                        continue
                    result = run_inproc(envs["ours"], model, rows, args.duration)
                    conc = 1
                    log(
                        f"  rep {rep + 1} {model.name} rows={rows} inproc: {result.req_s:,.0f} calls/s "
                        f"{result.rows_s:,.0f} rows/s p50 {result.p50_ms:.3f} ms"
                        + (f" ERROR {result.error}" if result.error else "")
                    )
                else:
                    server = servers[name]
                    body = server.body(BENCH_HOME / "models", rows)
                    overload = bool(slot.get("overload"))
                    if args.warmup > 0:
                        run_wrk(
                            server.url, body, rows=rows, connections=conc, seconds=args.warmup, key=server.key
                        )
                    result = run_wrk(
                        server.url,
                        body,
                        rows=rows,
                        connections=conc,
                        seconds=args.duration,
                        key=server.key,
                        tree=server.tree,
                        count_statuses=overload,
                    )
                    log(
                        f"  rep {rep + 1} {model.name} rows={rows} c={conc} {name}: "
                        f"{result.req_s:,.0f} req/s "
                        f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms "
                        f"cpu {result.cpu_us_per_req or 0:.0f} us/req non-2xx {result.non_2xx}"
                        + (f" ERROR {result.error}" if result.error else "")
                    )
                record = {"model": model.name, "rows": rows, "concurrency": conc, "variant": name, "rep": rep}
                record.update(asdict(result))
                if name != "ours-overload" and name != "inproc":
                    record.pop("rss_trace_mib", None)
                records.append(record)
    finally:
        for name, server in servers.items():
            code = stop_server(server)
            if name == "ours-overload":
                extras.setdefault("overload_exit_codes", []).append(code)
            if name == "ours-collect":
                extras.setdefault("collected_records", []).append(
                    {"rep": rep, "records": count_collected(server)}
                )
            if server.workdir is not None:
                shutil.rmtree(server.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    args = parse_args(argv)
    started = time.monotonic()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    unavailable: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    extras: dict[str, Any] = {}
    try:
        ensure_wrk()
        (BENCH_HOME / "logs").mkdir(parents=True, exist_ok=True)
        for old in (BENCH_HOME / "logs").glob("*.log"):
            old.unlink()  # server logs of the last run (Azure ML logs every request)
        log("models")
        models = prepare_models(BENCH_HOME / "models", log=log)
        log("peer environments")
        envs: dict[str, PeerEnv] = {}
        needed = {VARIANTS[p].env for p in args.peers if p in VARIANTS}
        if "inproc" in args.peers:
            needed.add("ours")
        for name in ("ours", "mlflow", "azureml"):
            if name in needed:
                envs[name] = prepare_env(name, BENCH_HOME / "venvs", log=log)
                if not envs[name].ok:
                    log(f"  {name}: {envs[name].reason}")
                    unavailable[name] = envs[name].reason
        if not envs.get("ours") or not envs["ours"].ok:
            unavailable["inproc"] = "needs the ours venv (onnxruntime)"
        info = machine()
        log(f"machine: {info['nproc']} cores, load {info['loadavg_start']}")
        groups = plan_groups(args, args.peers)
        cells = sum(len(slot["variants"]) for g in groups for slot in g["slots"])
        per_rep = cells * (args.duration + args.warmup) + 15 * len(groups)
        log(f"plan: {cells} cells per repetition, about {args.reps * per_rep / 60:.0f} min of measuring")
        for rep in range(args.reps):
            log(f"repetition {rep + 1}/{args.reps}")
            for group in groups:
                run_group(group, rep, args, envs, models, unavailable, records, extras)
    except KeyboardInterrupt:
        log("interrupted: stopping servers")
        stop_all()
        return 130
    finally:
        stop_all()
    info["loadavg_end"] = loadavg()
    info["wall_seconds"] = round(time.monotonic() - started, 1)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            "quick": args.quick,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "reps": args.reps,
            "concurrency": args.concurrency,
            "rows": args.rows,
            "peers": args.peers,
            "scenarios": args.scenarios,
        },
        "machine": info,
        "versions": {name: env.versions for name, env in envs.items() if env.ok},
        "models": {m.name: m.description for m in models.values()},
        "unavailable": unavailable,
        "extras": extras,
        "records": records,
    }
    out = BENCH_HOME / "results.json"
    out.write_text(json.dumps(results, indent=1))
    log(f"raw results: {out.relative_to(REPO)} ({info['wall_seconds']:.0f} s)")
    if not args.no_report:
        from report import write_report

        md, png = write_report(results, REPO / "docs")
        log(f"report: {md.relative_to(REPO)}, {png.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
