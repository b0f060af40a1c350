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


def test_small_and_large_batches_and_query_dtypes_agree() -> None:
    """A query's one forward pass (a small batch) gives encode's rows; bfloat16 queries stay close to float32."""
    source = MemorySettings().embedding_model
    exact, bf16 = Embedder(source, query_dtype="float32"), Embedder(source, query_dtype="bfloat16")
    texts = ["What is my dog called?", "My dog is called Rex."] + [f"Note {n}: buy more oat milk." for n in range(30)]

    large = exact.encode(texts)  # above the small-batch size: sentence-transformers' batched encode
    small = np.vstack([exact.encode(texts[start : start + 2]) for start in range(0, len(texts), 2)])
    assert exact.query_dtype == "float32" and bf16.query_dtype == "bfloat16"
    assert small.dtype == large.dtype == np.float32
    assert np.allclose(small, large, atol=1e-5)
    assert np.allclose(exact.encode_queries(texts), large, atol=1e-5)
    assert np.allclose(bf16.encode(texts), large, atol=1e-5)  # stored texts stay float32
    rounded = bf16.encode_queries(texts)
    assert rounded.dtype == np.float32
    assert np.allclose(np.linalg.norm(rounded, axis=1), 1.0, atol=1e-5)
    assert float((rounded * large).sum(axis=1).min()) >= 0.998
    assert exact.encode([]).shape == (0, exact.dimensions)


async def test_queries_are_embedded_by_the_query_model_off_the_loop() -> None:
    embedder = Embedder(MemorySettings().embedding_model, query_dtype="bfloat16")
    questions = [f"Where did I park on day {number}?" for number in range(12)]
    async with counting_loop_ticks() as ticks:
        results = await asyncio.gather(*(embedder.embed_queries([question]) for question in questions))
    assert (await embedder.embed_queries([])).shape == (0, embedder.dimensions)
    await embedder.close()

    assert ticks.count > 1
    assert np.allclose(np.vstack(results), embedder.encode_queries(questions), atol=1e-3)
