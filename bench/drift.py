"""Time the drift computation: 1,000,000 rows x 64 features against a baseline profile.

    .venv/bin/python bench/drift.py [--rows 1000000] [--features 64] [--runs 5] [--dtype float32]

Prints the median (and min/max) wall time of ``compute_drift`` over ``--runs`` runs after one
warm-up run. Half of the features are shifted so both the drifted and the stable paths run.
The target on the shared 2-core development machine is under 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from airflow_mlops.monitoring.baseline import profile_dataset
from airflow_mlops.monitoring.drift import compute_drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--workers", type=int, default=None, help="sorting threads (default: up to 4)")
    args = parser.parse_args()

    rng = np.random.default_rng(42)
    baseline = profile_dataset(rng.normal(size=(20_000, args.features)), sample_size=1000)
    current = rng.normal(size=(args.rows, args.features)).astype(args.dtype)
    current[:, ::2] += 0.3  # every other feature drifts

    compute_drift(baseline, current, workers=args.workers)  # warm-up: page in, thread start-up
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        result = compute_drift(baseline, current, workers=args.workers)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(
        f"drift {args.rows:,} rows x {args.features} features ({args.dtype}): "
        f"median {median:.3f} s over {args.runs} runs (min {min(times):.3f}, max {max(times):.3f}); "
        f"{len(result.drifted_features)} features drifted; target < 2 s: {'met' if median < 2 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
