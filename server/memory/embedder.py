"""Sentence embeddings (sentence-transformers), computed off the event loop in batches.

Concurrent callers' texts are gathered into one `encode` call: one forward pass
for many short texts costs little more than for one.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

PACKAGE_PREFIX = "package:"


def resolve_embedding_source(source: str) -> str:
    """`package:<module>` names a Python package that bundles the model (its `get_model_path()`)."""
    if source.startswith(PACKAGE_PREFIX):
        module = importlib.import_module(source.removeprefix(PACKAGE_PREFIX))
        return str(module.get_model_path())
    return str(Path(source).expanduser()) if source.startswith(("/", "~", ".")) else source


class Embedder:
    def __init__(self, source: str, max_batch: int = 64) -> None:
        self._model = SentenceTransformer(resolve_embedding_source(source), device="cpu")
        self.dimensions: int = self._model.get_embedding_dimension()
        self._max_batch = max_batch
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="embedder")
        self._queue: asyncio.Queue[tuple[Sequence[str], asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 rows, one per text (blocking: for threads and scripts)."""
        return self._model.encode(
            list(texts), batch_size=self._max_batch, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        if self._worker is None:
            self._worker = asyncio.create_task(self._batches())
        done: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, done))
        return await done

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self._queue.get()]
            size = len(waiting[0][0])
            while size < self._max_batch and not self._queue.empty():
                waiting.append(self._queue.get_nowait())
                size += len(waiting[-1][0])
            texts = [text for batch, _ in waiting for text in batch]
            try:
                vectors = await loop.run_in_executor(self._thread, self.encode, texts)
            except Exception as exc:  # hand the failure to every caller in the batch
                for _, done in waiting:
                    if not done.done():
                        done.set_exception(exc)
                continue
            start = 0
            for batch, done in waiting:
                if not done.done():
                    done.set_result(vectors[start : start + len(batch)])
                start += len(batch)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._thread.shutdown()
