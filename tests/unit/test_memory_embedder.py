"""The embedder answers concurrent callers with their own rows, off the event loop (batching: test_batching.py)."""

from __future__ import annotations

import asyncio

import numpy as np

from server.config import MemorySettings
from server.memory.embedder import Embedder
from tests.unit.loop_probe import counting_loop_ticks


async def test_concurrent_calls_get_their_own_unit_vectors_off_the_loop() -> None:
    embedder = Embedder(MemorySettings().embedding_model)
    texts = [f"I have {number} apples in my basket." for number in range(40)]
    async with counting_loop_ticks() as ticks:
        results = await asyncio.gather(*(embedder.embed([text]) for text in texts))
    await embedder.close()

    assert ticks.count > 1  # the loop kept running while the model encoded
    expected = embedder.encode(texts)
    assert np.allclose(np.vstack(results), expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)
