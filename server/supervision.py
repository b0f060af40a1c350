"""Supervised background work: a long-lived task that fails is logged and started again, never lost silently."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
HEALTHY_AFTER_S = 60.0  # a run this long counts as healthy: the next failure waits the first back-off again


def next_backoff(previous_s: float | None, first_s: float, ran_s: float, max_s: float = MAX_BACKOFF_S) -> float:
    """The wait before the next restart: doubles while runs keep failing fast, starts over after a healthy run."""
    if previous_s is None or ran_s >= HEALTHY_AFTER_S:
        return first_s
    return min(previous_s * 2, max_s)


async def supervise(name: str, run: Callable[[], Awaitable[None]], backoff_s: float = 1.0) -> None:
    """Run `run()` until it returns; after an exception log it (with traceback) and run it again after a back-off.

    Cancelling the supervisor cancels the running task and ends supervision.
    """
    wait_s: float | None = None
    restarts = 0
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            wait_s = next_backoff(wait_s, backoff_s, time.monotonic() - started)
            restarts += 1
            logger.exception("background task %s failed (restart %d in %.1fs)", name, restarts, wait_s)
        await asyncio.sleep(wait_s)


def start_supervised(name: str, run: Callable[[], Awaitable[None]], backoff_s: float = 1.0) -> asyncio.Task:
    return asyncio.create_task(supervise(name, run, backoff_s), name=f"supervised:{name}")


async def stop(task: asyncio.Task | None) -> None:
    """Cancel a supervised task and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
