"""Sentence embeddings (sentence-transformers), computed off the event loop in batches.

Concurrent callers' texts are gathered into one `encode` call: one forward pass
for many short texts costs little more than for one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sentence_transformers import SentenceTransformer

from server.batching import ThreadBatcher
from server.model_sources import resolve_packaged


class Embedder:
    def __init__(self, source: str, max_batch: int = 64) -> None:
        self._model = SentenceTransformer(resolve_packaged(source), device="cpu")
        self.dimensions: int = self._model.get_embedding_dimension()
        self._max_batch = max_batch
        self._batcher: ThreadBatcher[str, np.ndarray] = ThreadBatcher(self.encode, max_batch, "embedder")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 rows, one per text (blocking: for threads and scripts)."""
        return self._model.encode(
            list(texts), batch_size=self._max_batch, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32)

    @property
    def max_tokens(self) -> int:
        """The longest input (in tokens, special ones included) the model reads; longer ones are cut."""
        return int(self._model.max_seq_length)

    @property
    def vocab_size(self) -> int:
        return len(self._model.tokenizer)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's length in the model's tokens, special tokens included (what one forward pass reads)."""
        return [len(ids) for ids in self._model.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._model.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return await self._batcher.run(texts)  # type: ignore[return-value]  # rows of one array

    async def close(self) -> None:
        await self._batcher.close()
