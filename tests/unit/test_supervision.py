"""Supervised background tasks: a failure is logged and the task runs again; cancelling ends supervision."""

from __future__ import annotations

import asyncio
import logging

import pytest

from server.supervision import HEALTHY_AFTER_S, MAX_BACKOFF_S, next_backoff, start_supervised, stop, supervise


def test_backoff_doubles_while_failing_fast_and_starts_over_after_a_healthy_run() -> None:
    assert next_backoff(None, 0.5, ran_s=0.0) == 0.5
    assert next_backoff(0.5, 0.5, ran_s=0.1) == 1.0
    assert next_backoff(40.0, 0.5, ran_s=0.1) == MAX_BACKOFF_S
    assert next_backoff(8.0, 0.5, ran_s=HEALTHY_AFTER_S) == 0.5


async def test_a_failing_task_is_logged_and_restarted_until_it_completes(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"injected failure {len(runs)}")

    with caplog.at_level(logging.ERROR, logger="server.supervision"):
        await asyncio.wait_for(supervise("flaky", flaky, backoff_s=0.01), 5)
    assert runs == [0, 1, 2]
    failures = [record for record in caplog.records if "background task flaky failed" in record.getMessage()]
    assert len(failures) == 2
    assert all(record.exc_info and "injected failure" in str(record.exc_info[1]) for record in failures)


async def test_cancelling_stops_the_supervised_task() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = start_supervised("forever", forever)
    await asyncio.wait_for(started.wait(), 5)
    await stop(task)
    assert cancelled.is_set() and task.done()
