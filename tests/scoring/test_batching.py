"""The Runner alone: where batches run (loop or model thread), what each caller gets back."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import numpy as np
import pytest
from mlops_scoring.app import _inline_rows
from mlops_scoring.batching import Runner, stack_and_split


class Recorder:
    """A batch call that doubles its input and notes each call's size and thread."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []  # (rows, thread id)
        self.fail = fail

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        x = feeds["x"]
        self.calls.append((len(x), threading.get_ident()))
        if self.fail:
            raise ValueError("the model broke")
        return {"y": x * 2, "total": np.float32(x.sum())}


def job(first: int, rows: int) -> tuple[dict[str, np.ndarray], int]:
    return {"x": np.arange(first, first + rows, dtype=np.float32).reshape(rows, 1)}, rows


def runner_for(recorder: Recorder, **kwargs: Any) -> tuple[Runner, list[tuple[int, int, bool]]]:
    seen: list[tuple[int, int, bool]] = []
    runner = Runner(
        batch_call=stack_and_split(recorder.run),
        max_batch_size=kwargs.pop("max_batch_size", 64),
        on_batch=lambda jobs, rows, inline: seen.append((jobs, rows, inline)),
        **kwargs,
    )
    return runner, seen


async def submit_all(runner: Runner, sizes: list[int]) -> list[Any]:
    """Submit one job per size in the same loop tick; return the results in order."""
    deadline = time.monotonic() + 5
    futures, first = [], 0
    for rows in sizes:
        futures.append(runner.submit(job(first, rows), rows, deadline).future)
        first += rows
    return list(await asyncio.gather(*futures, return_exceptions=True))


def test_small_batches_run_on_the_loop_one_call_per_tick() -> None:
    recorder = Recorder()
    runner, seen = runner_for(recorder, inline_rows=8)

    async def main() -> list[Any]:
        runner.start(asyncio.get_running_loop())
        return await submit_all(runner, [1, 2, 1, 3])

    results = asyncio.run(main())
    runner.stop()
    assert [rows for rows, _ in recorder.calls] == [7], "one call for the whole tick"
    assert recorder.calls[0][1] == threading.get_ident(), "it ran on the loop's thread"
    assert seen == [(4, 7, True)]
    assert [r["y"].ravel().tolist() for r in results] == [[0], [2, 4], [6], [8, 10, 12]]
    assert all(r["total"] == 21 for r in results), "a per-batch output goes whole to every caller"


def test_batches_over_the_bound_run_on_the_model_thread() -> None:
    recorder = Recorder()
    runner, seen = runner_for(recorder, inline_rows=2)

    async def main() -> list[Any]:
        runner.start(asyncio.get_running_loop())
        return await submit_all(runner, [1, 1, 1])

    results = asyncio.run(main())
    runner.stop()
    assert recorder.calls[0][0] == 3 and recorder.calls[0][1] != threading.get_ident()
    assert seen[0] == (3, 3, False)
    assert [r["y"].ravel().tolist() for r in results] == [[0], [2], [4]]


def test_inline_off_keeps_every_call_off_the_loop() -> None:
    recorder = Recorder()
    runner, seen = runner_for(recorder, inline_rows=0)

    async def main() -> None:
        runner.start(asyncio.get_running_loop())
        for _ in range(3):
            await submit_all(runner, [1])

    asyncio.run(main())
    runner.stop()
    loop_thread = threading.get_ident()
    assert len(recorder.calls) == 3 and all(t != loop_thread for _, t in recorder.calls)
    assert all(not inline for *_, inline in seen)


def test_a_failing_inline_call_fails_every_caller_and_the_runner_goes_on() -> None:
    recorder = Recorder(fail=True)
    runner, _ = runner_for(recorder, inline_rows=8)

    async def main() -> tuple[list[Any], list[Any]]:
        runner.start(asyncio.get_running_loop())
        failed = await submit_all(runner, [1, 2])
        recorder.fail = False
        return failed, await submit_all(runner, [1])

    failed, later = asyncio.run(main())
    runner.stop()
    assert all(isinstance(r, ValueError) for r in failed)
    assert later[0]["y"].ravel().tolist() == [0]
    assert runner.depth == 0


def test_each_caller_gets_its_own_rows_in_order_across_both_paths() -> None:
    recorder = Recorder()
    # Up to 4 rows inline, bigger batches on the thread: bursts of every size use both.
    runner, seen = runner_for(recorder, inline_rows=4, max_batch_size=16)
    rng = random.Random(7)
    checked = 0

    async def caller(first: int, rows: int) -> None:
        nonlocal checked
        result = await runner.submit(job(first, rows), rows, time.monotonic() + 5).future
        assert result["y"].ravel().tolist() == [2.0 * v for v in range(first, first + rows)]
        checked += 1

    async def main() -> None:
        runner.start(asyncio.get_running_loop())
        first = 0
        for burst in [1, 12, *(rng.randint(1, 12) for _ in range(40))]:
            calls = []
            for _ in range(burst):  # one burst: every caller submits in the same tick
                rows = rng.randint(1, 3)
                calls.append(caller(first, rows))
                first += rows
            await asyncio.gather(*calls)

    asyncio.run(main())
    runner.stop()
    assert {inline for *_, inline in seen} == {True, False}, "both paths ran"
    assert sum(jobs for jobs, _, _ in seen) == checked
    assert max(rows for _, rows, _ in seen) <= 16, "no batch goes over max_batch_size"
    assert max(jobs for jobs, _, _ in seen) > 1, "concurrent callers shared calls"


class FakeModel:
    def __init__(
        self, one: float | None, per_row: float | None, batchable: bool = True, threads: int = 1
    ) -> None:
        self.one_row_us, self.row_cost_us, self.batchable, self.threads = one, per_row, batchable, threads


@pytest.mark.parametrize(
    ("model", "budget", "expected"),
    [
        (FakeModel(20, 4), 100, 21),  # 20 + 20 * 4 = 100
        (FakeModel(20, 4), 0, 0),  # switched off
        (FakeModel(150, 4), 100, 0),  # even one row costs more than the budget
        (FakeModel(20, 4, batchable=False), 100, 1),
        (FakeModel(None, None), 100, 0),  # cost unknown: never inline
        (FakeModel(1, 0.001), 100, 64),  # capped at the batch size
        (FakeModel(20, 4, threads=2), 100, 0),  # compute-bound: always the thread
    ],
)
def test_inline_rows_follow_the_measured_cost(model: FakeModel, budget: int, expected: int) -> None:
    assert _inline_rows(model, budget, 64) == expected  # type: ignore[arg-type]
