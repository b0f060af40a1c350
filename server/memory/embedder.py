"""Sentence embeddings (sentence-transformers), computed off the event loop in batches.

Concurrent callers' texts are gathered into one `encode` call: one forward pass
for many short texts costs little more than for one.

A query is one or two short texts, and its embedding is most of a retrieval's time: small batches skip
`SentenceTransformer.encode`'s per-call machinery (one forward pass under `torch.inference_mode`), and on a
CPU with native bfloat16 short texts are embedded by a bfloat16 copy of the model (`memory.query_embedding_dtype`):
its weights are read once per query, and half the bytes take about 0.6x the time (cosine to the float32
embedding >= 0.9999 for questions). Stored texts stay float32, as does `/v1/embeddings`.

Memory's search queries may have an encoder of their own (`query_source`, `memory.query_model`), trained to
meet the stored texts' embeddings (`query_encoder.py`); texts compared with each other (the guardrail's topic
judge) keep the stored texts' model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from server.batching import ThreadBatcher
from server.config import MemorySettings
from server.cpu_features import cpu_dtype, cpu_flags
from server.memory.query_encoder import query_model_path, query_model_source
from server.model_sources import resolve_packaged

EmbeddingDtype = Literal["auto", "float32", "bfloat16"]
SMALL_BATCH = 8  # at most this many texts: one forward pass, no length sorting or chunking


def open_embedder(settings: MemorySettings) -> Embedder:
    """Memory's embedder as configured (blocking: loads its models, training the builtin query encoder first if
    this data and recipe have none yet)."""
    source = query_model_source(settings.query_model, settings.embedding_model)
    return Embedder(
        settings.embedding_model,
        query_dtype=settings.query_embedding_dtype,
        query_source=None if source is None else query_model_path(source),
    )


class Embedder:
    def __init__(
        self,
        source: str,
        max_batch: int = 64,
        query_dtype: EmbeddingDtype = "auto",
        query_source: str | None = None,
    ) -> None:
        """`source`: the model of stored texts; `query_source`: memory search queries' own encoder (a path or
        repo id), None for `source`'s."""
        self.query_dtype = cpu_dtype(query_dtype, cpu_flags())
        self._model = SentenceTransformer(resolve_packaged(source), device="cpu").eval()
        self._short_model = self._model
        if self.query_dtype != "float32":
            self._short_model = self._load(resolve_packaged(source))
        self._query_model = self._short_model if query_source is None else self._load(query_source)
        self.dimensions: int = self._model.get_embedding_dimension()
        if self._query_model.get_embedding_dimension() != self.dimensions:
            raise ValueError(f"the query encoder {query_source} does not embed in {source}'s {self.dimensions}")
        self._max_batch = max_batch
        self._batcher: ThreadBatcher[str, np.ndarray] = ThreadBatcher(self.encode, max_batch, "embedder")
        # One thread for every short text (queries, topic sentences): they are batched together.
        self._query_batcher: ThreadBatcher[tuple[bool, str], np.ndarray] = ThreadBatcher(
            self._encode_tagged, max_batch, "query-embedder"
        )

    def _load(self, source: str) -> SentenceTransformer:
        """A model in `query_dtype`."""
        return SentenceTransformer(
            source, device="cpu", model_kwargs={"dtype": getattr(torch, self.query_dtype)}
        ).eval()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 rows, one per text (blocking: for threads and scripts)."""
        return self._encode(self._model, texts)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Memory search queries' rows, by the query encoder (in `query_dtype`); to compare with stored rows."""
        return self._encode(self._query_model, texts)

    def encode_short(self, texts: Sequence[str]) -> np.ndarray:
        """`encode` by the stored texts' model in `query_dtype`: short texts compared with each other."""
        return self._encode(self._short_model, texts)

    def _encode_tagged(self, items: Sequence[tuple[bool, str]]) -> np.ndarray:
        """Rows for (is a search query, text) items, in order: each kind by its own model."""
        if self._query_model is self._short_model:  # one model for both: one forward pass
            return self.encode_short([text for _, text in items])
        rows = np.zeros((len(items), self.dimensions), dtype=np.float32)
        for is_query, encode in ((True, self.encode_queries), (False, self.encode_short)):
            positions = [index for index, (query, _) in enumerate(items) if query is is_query]
            if positions:
                rows[positions] = encode([items[index][1] for index in positions])
        return rows

    def _encode(self, model: SentenceTransformer, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with torch.inference_mode():
            if len(texts) <= SMALL_BATCH:
                rows = model(model.preprocess(list(texts)))["sentence_embedding"]
            else:
                rows = model.encode(list(texts), batch_size=self._max_batch, convert_to_tensor=True)
            rows = torch.nn.functional.normalize(rows.float(), dim=-1)  # unit length in float32 precision
        return rows.numpy()

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

    async def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """`embed` for memory search queries (`encode_queries`)."""
        return await self._embed_tagged(True, texts)

    async def embed_short(self, texts: Sequence[str]) -> np.ndarray:
        """`embed` for short texts compared with each other (`encode_short`)."""
        return await self._embed_tagged(False, texts)

    async def _embed_tagged(self, is_query: bool, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return await self._query_batcher.run([(is_query, text) for text in texts])  # type: ignore[return-value]

    async def close(self) -> None:
        await self._batcher.close()
        await self._query_batcher.close()
