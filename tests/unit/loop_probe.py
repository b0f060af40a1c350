"""Counts event-loop turns while blocking work runs elsewhere: proof the loop stayed free."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class LoopTicks:
    count = 0


@asynccontextmanager
async def counting_loop_ticks() -> AsyncIterator[LoopTicks]:
    ticks = LoopTicks()

    async def tick() -> None:
        while True:
            ticks.count += 1
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(tick())
    try:
        yield ticks
    finally:
        ticking.cancel()
