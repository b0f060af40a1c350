"""The embedder batches concurrent callers into shared `encode` calls, off the event loop."""

from __future__ import annotations

import asyncio

import numpy as np

from server.config import MemorySettings
from server.memory.embedder import Embedder


async def test_concurrent_calls_share_batches_and_leave_the_loop_free() -> None:
    embedder = Embedder(MemorySettings().embedding_model)
    batches: list[int] = []
    encode = embedder.encode

    def recording_encode(texts):  # a spy: the real model still does the work
        batches.append(len(texts))
        return encode(texts)

    embedder.encode = recording_encode  # type: ignore[method-assign]
    texts = [f"I have {number} apples in my basket." for number in range(40)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(ticker())
    results = await asyncio.gather(*(embedder.embed([text]) for text in texts))
    ticking.cancel()
    await embedder.close()

    assert sum(batches) == 40 and len(batches) < 40  # callers were coalesced
    assert ticks > len(batches)  # the loop kept running while the model encoded
    expected = encode(texts)
    assert np.allclose(np.vstack(results), expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)
