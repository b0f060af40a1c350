"""Retrieval quality: labelled facts hidden among thousands of unrelated memories of the same group.

Runs the memory service in-process (real embedder, real SQLite + HNSW index),
no engine needed. Prints recall@1 and recall@5 beside plain cosine on the same memories.
"""

from __future__ import annotations

import random
from pathlib import Path

from server.config import MemorySettings
from server.memory.embedder import open_embedder
from server.memory.service import MemoryService
from server.memory.store import SQLiteMemoryStore
from tests.memory_corpus import distractors, labelled_facts

DISTRACTORS = 2400
GOAL = "A personal assistant that remembers the user's life, family, health, work and preferences"


async def test_recall_at_1_and_5_among_2400_distractors_beside_plain_cosine(tmp_path: Path) -> None:
    """The tuning set: the server's retrieval is never below plain MiniLM cosine on the same memories, and finds
    the fact in its first 5 for >= 95%. Recall@1 was 0.900 before memory's query encoder and 0.887-0.900 with it
    over runs (one question of 80); plain cosine 0.812."""
    settings = MemorySettings()
    embedder = open_embedder(settings)
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
        stored = embedder.encode(texts)
        plain = embedder.encode([fact.question for fact in facts]) @ stored.T
        cosine_at_1 = sum(texts[int(row.argmax())] == fact.fact for row, fact in zip(plain, facts, strict=True))
        cosine_at_1 /= len(facts)
        print(
            f"\nmemory retrieval over {len(texts)} memories: recall@1 {recall_at_1:.3f}  recall@5 {recall_at_5:.3f}"
            f"  (plain cosine recall@1 {cosine_at_1:.3f})"
        )
        assert recall_at_1 >= max(cosine_at_1, 0.85)
        assert recall_at_5 >= 0.95
    finally:
        await store.close()
        await embedder.close()


async def test_recalled_block_is_the_same_text_for_the_same_memories_whatever_the_question(tmp_path: Path) -> None:
    """A small group is recalled whole for different questions, in a different rank order each time; the block
    lists it in one order (oldest first), so the prompt's tokens up to the question are the same every time
    and vLLM's prefix cache serves them."""
    settings = MemorySettings()
    embedder = open_embedder(settings)
    store = SQLiteMemoryStore(tmp_path / "memory.sqlite3", embedder.dimensions)
    await store.open()
    service = MemoryService(store, embedder, settings)
    try:
        for text in ("My dog is called Rex.", "I live in Leeds.", "I am allergic to peanuts."):
            await service.add("eval", "small", [text], GOAL, "req_eval")
        words = lambda text: len(text.split())
        questions = ("What is my dog called?", "Where do I live?", "What am I allergic to?")
        ranked = [[hit.memory.text for hit in await service.search("eval", "small", q, 3)] for q in questions]
        assert len({tuple(order) for order in ranked}) > 1  # retrieval ranks them differently per question
        recalled = [await service.recall("eval", "small", GOAL, q, words) for q in questions]
        assert all(len(r.memories) == 3 for r in recalled)
        assert len({r.block for r in recalled}) == 1
        assert recalled[0].block.index("Rex") < recalled[0].block.index("Leeds") < recalled[0].block.index("peanuts")
    finally:
        await store.close()
        await embedder.close()
