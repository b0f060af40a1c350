"""ThreadBatcher: concurrent callers share one call of the blocking function, run off the event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.batching import ThreadBatcher
from tests.unit.loop_probe import counting_loop_ticks


async def test_concurrent_callers_are_coalesced_and_the_loop_stays_free() -> None:
    calls: list[list[int]] = []

    def squares(items: list[int]) -> list[int]:
        calls.append(items)
        time.sleep(0.02)  # blocking work, as a model's forward pass is
        return [item * item for item in items]

    batcher: ThreadBatcher[int, int] = ThreadBatcher(squares, max_batch=16, thread_name="test")
    async with counting_loop_ticks() as ticks:
        results = await asyncio.gather(*(batcher.run([number, number + 100]) for number in range(20)))
    await batcher.close()

    assert [list(result) for result in results] == [[n * n, (n + 100) ** 2] for n in range(20)]
    assert sum(len(call) for call in calls) == 40 and len(calls) < 20  # callers shared calls
    assert all(len(call) <= 16 + 2 for call in calls)  # a batch closes once max_batch is reached
    assert ticks.count > len(calls)  # the loop kept running during the blocking calls


async def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    def fragile(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return items

    batcher: ThreadBatcher[int, int] = ThreadBatcher(fragile, max_batch=4, thread_name="test")
    with pytest.raises(ValueError, match="unlucky"):
        await batcher.run([13])
    assert list(await batcher.run([1, 2])) == [1, 2]
    await batcher.close()
