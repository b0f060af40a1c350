"""Run a blocking batch function on its own thread, gathering concurrent callers into one call.

One forward pass of a small model over many short inputs costs little more
than over one, so callers that arrive while a batch runs share the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class ThreadBatcher(Generic[In, Out]):
    """`await run(items)` gives `batch_fn(items)`'s results, computed together with other callers' items."""

    def __init__(self, batch_fn: Callable[[list[In]], Sequence[Out]], max_batch: int, thread_name: str) -> None:
        self._batch_fn = batch_fn
        self._max_batch = max_batch
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        self._queue: asyncio.Queue[tuple[Sequence[In], asyncio.Future[Sequence[Out]]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def run(self, items: Sequence[In]) -> Sequence[Out]:
        if self._worker is None:
            self._worker = asyncio.create_task(self._batches())
        done: asyncio.Future[Sequence[Out]] = asyncio.get_running_loop().create_future()
        await self._queue.put((items, done))
        return await done

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self._queue.get()]
            size = len(waiting[0][0])
            while size < self._max_batch and not self._queue.empty():
                waiting.append(self._queue.get_nowait())
                size += len(waiting[-1][0])
            items = [item for batch, _ in waiting for item in batch]
            try:
                results = await loop.run_in_executor(self._thread, self._batch_fn, items)
            except Exception as exc:  # noqa: BLE001  # hand the failure to every caller in the batch
                for _, done in waiting:
                    if not done.done():
                        done.set_exception(exc)
                continue
            start = 0
            for batch, done in waiting:
                if not done.done():
                    done.set_result(results[start : start + len(batch)])
                start += len(batch)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._thread.shutdown()
