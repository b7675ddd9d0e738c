# ruff: noqa: RUF001  (the report is prose for people: en dashes and multiplication signs are meant)
"""Turn ``.bench/results.json`` into ``docs/benchmarks.md`` and ``docs/benchmarks.png``.

Each figure is the median over the repetitions of that cell (non-2xx responses are summed).
Run alone to re-render from the last raw results: ``.venv/bin/python bench/report.py``.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["summarise", "write_report"]

REPO = Path(__file__).resolve().parent.parent
LABELS = {
    "ours": "ours (mlops-serve)",
    "mlflow": "MLflow (mlflow models serve)",
    "azureml": "Azure ML (azmlinfsrv)",
    "inproc": "onnxruntime in process (limit)",
    "ours-collect": "ours, collection 100 %",
    "ours-w2": "ours, --workers 2",
    "ours-thread": "ours, --inline-max-us 0 (every call on the model thread)",
    "ours-overload": "ours, --max-queue 32 --max-concurrent-requests 8",
}
ORDER = list(LABELS)
METRICS = ("req_s", "rows_s", "p50_ms", "p99_ms", "cpu_us_per_req", "rss_peak_mib")
Key = tuple[str, int, int, str]


def summarise(results: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    """Return the median figures per ``(model, rows, concurrency, variant)``."""
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in results["records"]:
        groups[(r["model"], r["rows"], r["concurrency"], r["variant"])].append(r)
    out: dict[Key, dict[str, Any]] = {}
    for key, recs in groups.items():
        good = [r for r in recs if not r.get("error")]
        row: dict[str, Any] = {"reps": len(good), "errors": [r["error"] for r in recs if r.get("error")]}
        for m in METRICS:
            values = [r[m] for r in good if r.get(m) is not None]
            row[m] = statistics.median(values) if values else None
        row["non_2xx"] = sum(r.get("non_2xx", 0) for r in good)
        row["socket_errors"] = sum(r.get("socket_errors", 0) for r in good)
        row["loadavg"] = [r["loadavg_before"][0] for r in recs if r.get("loadavg_before")]
        out[key] = row
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def _get(
    s: dict[Key, dict[str, Any]], model: str, rows: int, conc: int, variant: str, metric: str
) -> float | None:
    row = s.get((model, rows, conc, variant))
    return None if row is None else row.get(metric)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _goals(results: dict[str, Any], s: dict[Key, dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """Return ``(goal, measured, met)`` for each goal of issues 5 and 4 (met None: not measured)."""
    goals: list[tuple[str, str, bool | None]] = []
    ours64 = _get(s, "digits", 1, 64, "ours", "req_s")

    def add(goal: str, value: float | None, ok: bool | None, shown: str) -> None:
        goals.append(
            (goal, shown if value is not None else "not measured", ok if value is not None else None)
        )

    r_az = _ratio(ours64, _get(s, "digits", 1, 64, "azureml", "req_s"))
    add(
        "digits, 1 row, c64: ≥ 12× Azure ML's req/s",
        r_az,
        r_az is not None and r_az >= 12,
        f"{r_az or 0:.1f}×",
    )
    r_ml = _ratio(ours64, _get(s, "digits", 1, 64, "mlflow", "req_s"))
    add(
        "digits, 1 row, c64: ≥ 25× MLflow's req/s", r_ml, r_ml is not None and r_ml >= 25, f"{r_ml or 0:.1f}×"
    )
    add(
        "digits, 1 row, c64: ≈ 11,000 req/s (taken as ≥ 11,000)",
        ours64,
        ours64 is not None and ours64 >= 11000,
        f"{ours64 or 0:,.0f} req/s",
    )
    p50 = _get(s, "digits", 1, 64, "ours", "p50_ms")
    p99 = _get(s, "digits", 1, 64, "ours", "p99_ms")
    tail = _ratio(p99, p50)
    add(
        "digits, 1 row, c64: p99 ≤ 2× p50",
        tail,
        tail is not None and tail <= 2,
        f"p99 {_ms(p99)} ms = {tail or 0:.2f}× p50 {_ms(p50)} ms",
    )
    p99_16 = _get(s, "digits", 1, 16, "ours", "p99_ms")
    add("digits, 1 row, c16: p99 < 5 ms", p99_16, p99_16 is not None and p99_16 < 5, f"{_ms(p99_16)} ms")
    p50_1 = _get(s, "digits", 1, 1, "ours", "p50_ms")
    add("digits, 1 row, c1: p50 < 0.25 ms", p50_1, p50_1 is not None and p50_1 < 0.25, f"{_ms(p50_1)} ms")
    cpu = _get(s, "digits", 1, 64, "ours", "cpu_us_per_req")
    add(
        "digits, 1 row, c64: server CPU ≤ 120 µs per request",
        cpu,
        cpu is not None and cpu <= 120,
        f"{_fmt(cpu)} µs",
    )
    wide = _get(s, "wide", 32, 64, "ours", "rows_s")
    limit = _get(s, "wide", 32, 1, "inproc", "rows_s")
    share = _ratio(wide, limit)
    add(
        "wide MLP, 32 rows, c64: rows/s ≥ 80 % of in-process onnxruntime",
        share,
        share is not None and share >= 0.8,
        f"{share or 0:.0%} ({_fmt(wide)} vs {_fmt(limit)} rows/s)",
    )
    over = s.get(("digits", 1, 512, "ours-overload"))
    if over is not None:
        recs = [r for r in results["records"] if r["variant"] == "ours-overload" and not r.get("error")]
        statuses: dict[str, int] = defaultdict(int)
        for r in recs:
            for code, n in r.get("statuses", {}).items():
                statuses[code] += n
        only_ok = bool(statuses) and set(statuses) <= {"200", "503"}
        alive = all(r.get("alive_after") for r in recs) and all(
            c == 0 for c in results["extras"].get("overload_exit_codes", [])
        )
        growth = max((r["rss_peak_mib"] or 0) - (r["rss_start_mib"] or 0) for r in recs) if recs else None
        bounded = growth is not None and growth < 256
        shown = (
            f"statuses {dict(sorted(statuses.items()))}, socket errors {over['socket_errors']}, "
            f"alive and exit 0 on SIGTERM: {alive}, RSS +{growth or 0:.0f} MiB over idle"
        )
        add(
            "overload (c512, queue 32): no crash, every response 200/503, RSS bounded (< +256 MiB)",
            1.0 if recs else None,
            only_ok and alive and bounded,
            shown,
        )
    plain = ours64
    collect = _get(s, "digits", 1, 64, "ours-collect", "req_s")
    loss = 1 - collect / plain if collect is not None and plain else None
    add(
        "data collection at 100 % (issue 4): throughput loss < 5 % (digits, 1 row, c64)",
        loss,
        loss is not None and loss < 0.05,
        f"{(loss or 0):.1%} ({_fmt(collect)} vs {_fmt(plain)} req/s)",
    )
    return goals


def _markdown(results: dict[str, Any], s: dict[Key, dict[str, Any]], png_name: str) -> str:
    m = results["machine"]
    st = results["settings"]
    loads = [x for row in s.values() for x in row["loadavg"]]
    lines = [
        "# Serving benchmark",
        "",
        f"Generated by `make bench` (`{results['command']}`) on {results['date']}; do not edit by hand.",
        "",
    ]
    if st["quick"]:
        lines += [
            "> **Smoke run (`--quick`)**: one repetition of short cells, some cells left out. "
            "Not the benchmark's figures.",
            "",
        ]
    if m["loadavg_start"][0] > 0.5 * (m["nproc"] or 1):
        lines += [
            f"> **Busy machine**: 1-minute load {m['loadavg_start'][0]:.2f} at the start on "
            f"{m['nproc']} cores; other work shared the CPU, so every figure below is lower (and "
            "noisier) than on a quiet machine.",
            "",
        ]
    lines += [
        "## Machine",
        "",
        f"- CPU: {m['cpu'] or 'unknown'}, {m['nproc']} cores (`nproc`), {m['memory_gib']} GiB; "
        f"Linux {m['kernel']}; Python {m['python']}; {m['wrk']}",
        f"- Load (`/proc/loadavg`, 1/5/15 min): {m['loadavg_start']} at the start, "
        f"{m.get('loadavg_end')} at the end; "
        + (
            f"1-minute load before the cells: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
            f"max {max(loads):.2f}"
            if loads
            else ""
        ),
        f"- Wall time of the run: {m.get('wall_seconds', 0) / 60:.1f} min",
        "",
        "Versions in each peer's venv:",
        "",
    ]
    for name, versions in results["versions"].items():
        lines.append(f"- `{name}`: " + ", ".join(f"{k} {v}" for k, v in sorted((versions or {}).items())))
    lines += ["", "## Method", ""]
    lines += [
        "- Models: " + "; ".join(f"**{k}**: {v}" for k, v in results["models"].items()) + ". Both take "
        "`input: float32[N, 64]` and return `label` and `probabilities`; the request rows are real digits "
        "images.",
        "- Peers, each in its own venv under `.bench/venvs/`, all on 127.0.0.1 with one worker process each "
        "(their defaults): **ours** — `mlops-serve --model-dir … --keys-file …`, POST `/score` with "
        '`{"data": [[…]]}` and `Authorization: Bearer <key>` (auth, input validation and metrics on, as '
        "shipped); **MLflow** — `mlflow models serve --env-manager local` on the model saved with "
        '`mlflow.onnx.save_model` (with a signature), POST `/invocations` with `{"inputs": [[…]]}`; '
        "**Azure ML** — `azmlinfsrv --entry_script bench/azureml_score.py` (onnxruntime session made in "
        "`init()`, JSON scored in `run()`), POST `/score`, bound to loopback; **in process** — one caller "
        "running `InferenceSession.run` back to back on the same rows (no HTTP): the limit.",
        "- Every server's answer to the 32-row payload is checked against in-process onnxruntime's labels "
        "before it is measured.",
        f"- Load: `wrk` (1 thread below 16 connections, else 2) with `bench/post.lua`; concurrency = open "
        f"connections. Each cell runs {st['warmup_s']:g} s of warm-up, then {st['duration_s']:g} s measured; "
        f"{st['reps']} repetition(s); within a repetition every slot measures each peer in turn, and the "
        "order rotates between repetitions. Figures are medians over repetitions; non-2xx is the total.",
        "- p50/p99: wrk's latency histogram (`done()` prints percentiles as JSON). Server CPU µs/request: "
        "growth of utime+stime over the server's whole process tree (`/proc/<pid>/stat`) while wrk ran, "
        "÷ requests. RSS: the peak of the tree's summed resident set, sampled every 0.2 s.",
        "- wrk, the servers and the in-process caller share the same cores, as in issue 5's reference "
        "figures.",
        "",
    ]
    if results["unavailable"]:
        lines += ["## Peers that could not run here", ""]
        for name, reason in results["unavailable"].items():
            lines.append(f"- **{name}**: {reason[:600]}")
        lines.append("")
    lines += [
        "## Goals (issue 5, and issue 4's collection figure)",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    for goal, shown, ok in _goals(results, s):
        lines.append(
            f"| {goal} | {shown} | {'✅ met' if ok else '— not measured' if ok is None else '❌ not met'} |"
        )
    lines += ["", "## Ratios: ours ÷ peer (req/s, digits model)", ""]
    concs = sorted({k[2] for k in s if k[0] == "digits" and k[2] != 512})
    rows_list = sorted({k[1] for k in s if k[0] == "digits"})
    lines += ["| rows | concurrency | ÷ Azure ML | ÷ MLflow | ours ÷ in-process |", "|---|---|---|---|---|"]
    for rows in rows_list:
        for c in concs:
            ours = _get(s, "digits", rows, c, "ours", "req_s")
            if ours is None:
                continue
            az = _ratio(ours, _get(s, "digits", rows, c, "azureml", "req_s"))
            ml = _ratio(ours, _get(s, "digits", rows, c, "mlflow", "req_s"))
            ip = _ratio(ours, _get(s, "digits", rows, 1, "inproc", "req_s"))
            lines.append(
                f"| {rows} | {c} | {_fmt(az, 1) + '×' if az else '–'} | {_fmt(ml, 1) + '×' if ml else '–'} | "
                f"{f'{ip:.0%}' if ip else '–'} |"
            )
    lines += [
        "",
        "## All cells (medians)",
        "",
        "| model | rows | conc. | peer | req/s | rows/s | p50 ms | p99 ms | non-2xx "
        "| server CPU µs/req | RSS MiB | reps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {v: i for i, v in enumerate(ORDER)}
    for key in sorted(s, key=lambda k: (k[0] != "digits", k[0], k[1], k[2], order.get(k[3], 99))):
        model, rows, conc, variant = key
        row = s[key]
        conc_shown = "–" if variant == "inproc" else str(conc)
        non2xx = str(row["non_2xx"]) + (f" (+{row['socket_errors']} socket)" if row["socket_errors"] else "")
        if row["errors"]:
            non2xx += f" ({len(row['errors'])} failed runs)"
        lines.append(
            f"| {model} | {rows} | {conc_shown} | {LABELS.get(variant, variant)} | {_fmt(row['req_s'])} | "
            f"{_fmt(row['rows_s'])} | {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | {non2xx} | "
            f"{_fmt(row['cpu_us_per_req'])} | {_fmt(row['rss_peak_mib'])} | {row['reps']} |"
        )
    lines += ["", "## Extra scenarios", ""]
    collected = results["extras"].get("collected_records")
    if collected:
        lines.append(
            "- Data collection (`--collect-sink <tmp dir> --collect-sampling 1.0`): records written per "
            "repetition, counted after SIGTERM flushed the collector: "
            + ", ".join(f"{c['records']:,}" for c in collected)
            + " (covers warm-up and measured requests)."
        )
    thread_concs = sorted(k[2] for k in s if k[:2] == ("digits", 1) and k[3] == "ours-thread")
    if thread_concs:
        parts = []
        for c in thread_concs:
            on, off = s.get(("digits", 1, c, "ours")), s[("digits", 1, c, "ours-thread")]
            if on is None or not off["req_s"]:
                continue
            ratio = on["req_s"] / off["req_s"]
            parts.append(
                f"c{c}: {_fmt(on['req_s'])} vs {_fmt(off['req_s'])} req/s ({ratio:.2f}×), "
                f"p50 {_ms(on['p50_ms'])} vs {_ms(off['p50_ms'])} ms, "
                f"p99 {_ms(on['p99_ms'])} vs {_ms(off['p99_ms'])} ms, "
                f"CPU {_fmt(on['cpu_us_per_req'])} vs {_fmt(off['cpu_us_per_req'])} µs/req"
            )
        lines.append(
            "- Cheap calls on the event loop (the default, `--inline-max-us 100`) against every call "
            "on the model thread (`--inline-max-us 0`), digits, 1 row: " + "; ".join(parts) + "."
        )
    over = [r for r in results["records"] if r["variant"] == "ours-overload" and not r.get("error")]
    for r in over:
        trace = r.get("rss_trace_mib") or []
        lines.append(
            f"- Overload, repetition {r['rep'] + 1}: {r['requests']:,} responses {r.get('statuses')}, "
            f"{r['socket_errors']} socket errors; RSS {r['rss_start_mib'] or 0:.0f} MiB idle → peak "
            f"{r['rss_peak_mib'] or 0:.0f} MiB (last sample {trace[-1] if trace else 0:.0f} MiB); "
            f"server alive after: {r['alive_after']}."
        )
    if results["extras"].get("overload_exit_codes"):
        lines.append(
            f"- Overload server's exit codes on SIGTERM: {results['extras']['overload_exit_codes']}."
        )
    servers = results["extras"].get("servers", [])
    bad = [x for x in servers if x["agrees_with_onnxruntime"] is False]
    lines.append(
        f"- Answer check: {len(servers) - len(bad)} of {len(servers)} server starts returned the same labels "
        "as in-process onnxruntime"
        + (f"; disagreeing: {sorted({x['variant'] for x in bad})}" if bad else "")
        + "."
    )
    lines += ["", f"![req/s and p99 per peer and concurrency]({png_name})", ""]
    lines += [
        "## Running it",
        "",
        "- `make bench`: the full run (3 repetitions of 10 s cells, every peer and scenario): about "
        "20 minutes, plus about 5 minutes the first time to build the peers' venvs in `.bench/venvs/`. "
        "Run it on a quiet machine.",
        "- `.venv/bin/python bench/run.py --quick`: a 2-minute smoke run. Other flags: `--peers "
        "ours,mlflow,azureml,inproc`, `--duration S`, `--warmup S`, `--reps N`, `--concurrency 1,16,64`, "
        "`--rows 1,32`, `--scenarios compute,overload,collect,workers,thread|none`, `--no-report`.",
        "- `.venv/bin/python bench/report.py` re-renders this page from `.bench/results.json`.",
        "",
    ]
    lines += ["Raw figures of every repetition: `.bench/results.json` (not committed).", ""]
    return "\n".join(lines)


def _chart(s: dict[Key, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [p for p in ("ours", "mlflow", "azureml") if any(k[3] == p for k in s)]
    colours = {
        "ours": "#1f77b4",
        "mlflow": "#ff7f0e",
        "azureml": "#2ca02c",
        "inproc": "#7f7f7f",
        "ours-collect": "#9467bd",
        "ours-w2": "#17becf",
        "ours-thread": "#bcbd22",
    }
    rows_list = sorted({k[1] for k in s if k[0] == "digits" and k[3] in peers}) or [1]
    fig, axes = plt.subplots(2, len(rows_list) + 1, figsize=(5 * (len(rows_list) + 1), 8), squeeze=False)
    width = 0.8 / max(1, len(peers))
    for col, rows in enumerate(rows_list):
        concs = sorted({k[2] for k in s if k[0] == "digits" and k[1] == rows and k[3] in peers})
        for row_i, (metric, title) in enumerate((("req_s", "req/s"), ("p99_ms", "p99 latency (ms)"))):
            ax = axes[row_i][col]
            for i, peer in enumerate(peers):
                xs, ys = [], []
                for j, c in enumerate(concs):
                    v = _get(s, "digits", rows, c, peer, metric)
                    if v:
                        xs.append(j + (i - (len(peers) - 1) / 2) * width)
                        ys.append(v)
                ax.bar(xs, ys, width, label=LABELS[peer], color=colours[peer])
            limit = _get(s, "digits", rows, 1, "inproc", metric)
            if limit and metric == "req_s":
                ax.axhline(limit, color=colours["inproc"], linestyle="--", label=LABELS["inproc"])
            ax.set_xticks(range(len(concs)), [f"c{c}" for c in concs])
            ax.set_yscale("log")
            ax.set_title(f"digits, {rows} row{'s' if rows > 1 else ''}: {title}")
            ax.grid(axis="y", alpha=0.3)
            if row_i == 0 and col == 0:
                ax.legend(fontsize=8)
    ax = axes[0][-1]
    names = [p for p in (*peers, "inproc") if _get(s, "wide", 32, 1 if p == "inproc" else 64, p, "rows_s")]
    values = [_get(s, "wide", 32, 1 if p == "inproc" else 64, p, "rows_s") for p in names]
    ax.bar(range(len(names)), values, color=[colours[p] for p in names])
    ax.set_xticks(range(len(names)), [p if p != "inproc" else "in process" for p in names])
    ax.set_title("wide MLP, 32 rows, c64: rows/s")
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1][-1]
    names = [
        p for p in ("ours", "ours-thread", "ours-collect", "ours-w2") if _get(s, "digits", 1, 64, p, "req_s")
    ]
    values = [_get(s, "digits", 1, 64, p, "req_s") for p in names]
    ax.bar(range(len(names)), values, color=[colours[p] for p in names])
    short = {
        "ours": "ours",
        "ours-thread": "all on thread",
        "ours-collect": "collect 100 %",
        "ours-w2": "2 workers",
    }
    ax.set_xticks(range(len(names)), [short[p] for p in names])
    ax.set_title("digits, 1 row, c64: req/s (variants of ours)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: dict[str, Any], docs: Path) -> tuple[Path, Path]:
    """Write the Markdown report and the chart into ``docs``; return both paths."""
    s = summarise(results)
    docs.mkdir(parents=True, exist_ok=True)
    md, png = docs / "benchmarks.md", docs / "benchmarks.png"
    _chart(s, png)
    md.write_text(_markdown(results, s, png.name))
    return md, png


if __name__ == "__main__":
    raw = json.loads((REPO / ".bench" / "results.json").read_text())
    for p in write_report(raw, REPO / "docs"):
        print(p)
    sys.exit(0)
