"""Retrieval quality: labelled facts hidden among thousands of unrelated memories of the same group.

Runs the memory service in-process (real embedder, real SQLite + HNSW index),
no engine needed. Prints recall@1 and recall@5; targets 0.9 and 0.95.
"""

from __future__ import annotations

import random
from pathlib import Path

from server.config import MemorySettings
from server.memory.embedder import Embedder
from server.memory.service import MemoryService
from server.memory.store import SQLiteMemoryStore
from tests.memory_corpus import distractors, labelled_facts

DISTRACTORS = 2400
GOAL = "A personal assistant that remembers the user's life, family, health, work and preferences"


async def test_recall_at_1_and_5_among_2400_distractors(tmp_path: Path) -> None:
    settings = MemorySettings()
    embedder = Embedder(settings.embedding_model)
    store = SQLiteMemoryStore(tmp_path / "memory.sqlite3", embedder.dimensions)
    await store.open()
    service = MemoryService(store, embedder, settings)
    try:
        facts = labelled_facts()
        texts = [fact.fact for fact in facts] + distractors(DISTRACTORS)
        random.Random(7).shuffle(texts)
        for start in range(0, len(texts), 256):
            await service.add("eval", "life", texts[start : start + 256], GOAL, "req_eval")

        ranks = []
        for fact in facts:
            hits = await service.search("eval", "life", fact.question, 5)
            found = [hit.memory.text for hit in hits]
            ranks.append(found.index(fact.fact) + 1 if fact.fact in found else None)
        recall_at_1 = sum(rank == 1 for rank in ranks) / len(facts)
        recall_at_5 = sum(rank is not None for rank in ranks) / len(facts)
        print(f"\nmemory retrieval over {len(texts)} memories: recall@1 {recall_at_1:.3f}  recall@5 {recall_at_5:.3f}")
        assert recall_at_1 >= 0.9
        assert recall_at_5 >= 0.95
    finally:
        await store.close()
        await embedder.close()
