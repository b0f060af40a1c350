"""Curation planning: duplicate clusters, consolidation guard, irrelevant turns (hand-made unit vectors)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from server.config import MemorySettings
from server.memory.curation import acceptable_consolidation, clusters, plan_curation, similar_pairs
from server.memory.store import Memory, Snapshot

DAY = 86400.0
NOW = 1_800_000_000.0


def vector(*components: float) -> np.ndarray:
    padded = np.zeros(4, dtype=np.float32)
    padded[: len(components)] = components
    return padded / np.linalg.norm(padded)


def memory(memory_id: int, text: str, kind: str = "fact", age_days: float = 0.0) -> Memory:
    at = NOW - age_days * DAY
    return Memory(memory_id, text, kind, None, at, at)


async def embed(texts: Sequence[str]) -> np.ndarray:
    return np.stack([vector(0, 0, 0, 1) for _ in texts])


async def in_thread(function, *args):
    return function(*args)


def test_pairs_and_clusters() -> None:
    embeddings = np.stack([vector(1, 0), vector(1, 0.05), vector(0, 1), vector(1, 0.1)])
    pairs = similar_pairs(embeddings, 0.99)
    assert {(left, right) for left, right, _ in pairs} == {(0, 1), (0, 3), (1, 3)}
    assert clusters(4, pairs) == [[0, 1, 3]]


def test_consolidation_must_keep_the_newest_notes_names_and_numbers() -> None:
    notes = ["My sister lives in Porto.", "My sister Laura moved to Lisbon in 2024."]
    assert acceptable_consolidation(notes, "My sister Laura moved to Lisbon in 2024.")
    assert not acceptable_consolidation(notes, "My sister lives in Porto.")  # lost the newer facts
    assert not acceptable_consolidation(notes, "")
    assert not acceptable_consolidation(notes, "Where does Laura live in Lisbon since 2024?")
    assert not acceptable_consolidation(notes, "Laura moved to Lisbon in 2024.")  # whose sister?
    assert not acceptable_consolidation(["My food is sushi.", "My favourite food is now ramen."], "My favourite food.")
    assert not acceptable_consolidation(notes, 'The sentence is correct: "My sister Laura moved to Lisbon in 2024."')
    assert acceptable_consolidation(
        ["I work as a nurse.", "I'm a nurse at Porto General."], "I'm a nurse at Porto General."
    )


async def test_plan_merges_duplicates_consolidates_related_and_drops_old_unrelated_turns() -> None:
    memories = (
        memory(1, "My dog is called Rex.", age_days=3),
        memory(2, "My dog is named Rex.", age_days=1),  # newest duplicate: kept
        memory(3, "My sister lives in Porto.", age_days=9),
        memory(4, "My sister Laura moved to Lisbon.", age_days=2),
        memory(5, "User: what's the weather?\nAssistant: Sunny.", kind="turn", age_days=60),
        memory(6, "User: recipe?\nAssistant: Pasta.", kind="turn", age_days=2),  # too recent to drop
    )
    embeddings = np.stack(
        [vector(1, 0), vector(1, 0.01), vector(0, 1, 0), vector(0, 1, 0.8), vector(-1, 0, -1), vector(0, 0, 0, -1)]
    )
    asked: list[list[str]] = []

    async def consolidate(texts: Sequence[str]) -> str:
        asked.append(list(texts))
        return "My sister Laura moved from Porto to Lisbon."

    plan = await plan_curation(
        Snapshot(memories, embeddings), vector(1, 1), MemorySettings(), consolidate, embed, in_thread, now=NOW
    )
    actions = [
        (change.action, [m.id for m in change.removed], [m.text for m in change.added]) for change in plan.changes
    ]
    assert actions == [
        ("merge_duplicates", [1], []),
        ("consolidate", [3, 4], ["My sister Laura moved from Porto to Lisbon."]),
        ("drop_irrelevant", [5], []),
    ]
    assert asked == [["My sister lives in Porto.", "My sister Laura moved to Lisbon."]]  # oldest first


async def test_a_consolidation_that_loses_details_is_not_applied() -> None:
    memories = (
        memory(1, "My sister lives in Porto.", age_days=2),
        memory(2, "My sister Laura moved to Lisbon.", age_days=1),
    )
    embeddings = np.stack([vector(0, 1, 0), vector(0, 1, 0.8)])  # related (0.78), not duplicates

    async def careless(texts: Sequence[str]) -> str:
        return "The user has a sister."

    plan = await plan_curation(
        Snapshot(memories, embeddings), None, MemorySettings(), careless, embed, in_thread, now=NOW
    )
    assert plan.changes == ()
