"""Nightly curation: plan what to merge, consolidate and drop in a group; the store applies it atomically.

Planning only reads (a snapshot) and asks the model; nothing changes until the
store applies the whole plan in one transaction, skipping any change whose
memories were edited meanwhile. A crash at any point leaves the group as it was
or fully curated, never half; every removal is kept in the audit log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from server.config import MemorySettings
from server.memory.recall import RELATIONS, STOPWORDS
from server.memory.store import CurationChange, Memory, NewMemory, Snapshot

Consolidate = Callable[[Sequence[str]], Awaitable[str]]
Embed = Callable[[Sequence[str]], Awaitable[np.ndarray]]

MAX_CLUSTER = 6
MAX_CONSOLIDATIONS_PER_RUN = 32
ROW_BLOCK = 1024
_META = re.compile(r"[\"“”]|\b(note|notes|sentence)\b", re.IGNORECASE)  # talk about the task, not a fact
_SALIENT = re.compile(r"\b(?:\d[\d.,:/-]*|[A-Z][a-z]+(?:[A-Z][a-z]+)*)\b")

CONSOLIDATE_SYSTEM = (
    "You merge notes about a user into one short factual sentence in the user's own voice. "
    "When notes disagree, the later note is correct. Answer with the sentence only."
)


def consolidation_prompt(texts: Sequence[str]) -> str:
    # Measured on SmolLM2-135M: a numbered list made it echo the list; bullets and a short cue give one sentence.
    notes = "\n".join(f"- {text}" for text in texts)
    return f"Notes:\n{notes}\nOne sentence:"


def similar_pairs(embeddings: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(i, j, cosine) for i < j with cosine >= threshold; rows are unit vectors. Blocked to bound memory."""
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(embeddings), ROW_BLOCK):
        block = embeddings[start : start + ROW_BLOCK] @ embeddings.T
        rows, cols = np.nonzero(block >= threshold)
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            if start + row < col:
                pairs.append((start + row, col, float(block[row, col])))
    return pairs


def clusters(count: int, pairs: Sequence[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components of size >= 2 (union-find), members in ascending order."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for left, right, _ in pairs:
        parent[root(left)] = root(right)
    groups: dict[int, list[int]] = {}
    for node in sorted({node for pair in pairs for node in pair[:2]}):
        groups.setdefault(root(node), []).append(node)
    return [members for members in groups.values() if len(members) >= 2]


def salient_tokens(text: str) -> list[str]:
    """Numbers, names (capitalised words but a sentence's first) and the people a note is about."""
    names = [
        match.group(0)
        for match in _SALIENT.finditer(text)
        if match.group(0)[0].isdigit() or not re.search(r"(^|[.!?]\s+)$", text[: match.start()])
    ]
    return names + [word for word in re.findall(r"[a-z]+(?:-[a-z]+)*", text) if word in RELATIONS]


def keeps_details(source: str, merged: str, share: float = 0.8) -> bool:
    """A consolidation may reword, but must keep the newest note's names, numbers and people, and most of its words."""
    if not all(token in merged for token in salient_tokens(source)):
        return False
    content = {word for word in re.findall(r"[a-z0-9']+", source.lower()) if word not in STOPWORDS and len(word) > 2}
    kept = set(re.findall(r"[a-z0-9']+", merged.lower()))
    return len(content & kept) >= share * len(content)


def acceptable_consolidation(texts: Sequence[str], merged: str) -> bool:
    merged = merged.strip()
    return (
        0 < len(merged) <= 2 * max(len(text) for text in texts) + 40
        and not merged.endswith("?")
        and not _META.search(merged)
        and keeps_details(texts[-1], merged)
    )


@dataclass(frozen=True)
class CurationPlan:
    changes: tuple[CurationChange, ...]
    examined: int


async def plan_curation(
    snapshot: Snapshot,
    goal_vector: np.ndarray | None,
    settings: MemorySettings,
    consolidate: Consolidate,
    embed: Embed,
    run_in_thread: Callable[..., Awaitable],
    now: float | None = None,
) -> CurationPlan:
    now = time.time() if now is None else now
    memories = snapshot.memories
    pairs = await run_in_thread(similar_pairs, snapshot.embeddings, settings.related_similarity)
    changes: list[CurationChange] = []
    gone: set[int] = set()

    duplicate_pairs = [pair for pair in pairs if pair[2] >= settings.duplicate_similarity]
    for members in clusters(len(memories), duplicate_pairs):
        newest = max(members, key=lambda index: (memories[index].updated_at, memories[index].id))
        removed = tuple(memories[index] for index in members if index != newest)
        changes.append(
            CurationChange(
                "merge_duplicates", removed, (), f"near-duplicates of memory {memories[newest].id}, which is kept"
            )
        )
        gone.update(index for index in members if index != newest)

    related_pairs = [
        pair
        for pair in pairs
        if pair[0] not in gone and pair[1] not in gone and all(memories[i].kind != "turn" for i in pair[:2])
    ]
    consolidated = 0
    for members in clusters(len(memories), related_pairs):
        if consolidated >= MAX_CONSOLIDATIONS_PER_RUN or len(members) > MAX_CLUSTER:
            continue
        ordered = sorted(members, key=lambda index: (memories[index].updated_at, memories[index].id))
        texts = [memories[index].text for index in ordered]
        merged = " ".join((await consolidate(texts)).split())
        if not acceptable_consolidation(texts, merged):
            continue
        [vector] = await embed([merged])
        changes.append(
            CurationChange(
                "consolidate",
                tuple(memories[index] for index in ordered),
                (NewMemory(merged, "consolidated", vector),),
                "related memories consolidated into one fact (later ones win on conflict)",
            )
        )
        gone.update(members)
        consolidated += 1

    if goal_vector is not None:
        changes += drop_irrelevant_turns(memories, snapshot.embeddings, goal_vector, settings, gone, now)
    return CurationPlan(tuple(changes), len(memories))


def drop_irrelevant_turns(
    memories: Sequence[Memory],
    embeddings: np.ndarray,
    goal_vector: np.ndarray,
    settings: MemorySettings,
    gone: set[int],
    now: float,
) -> list[CurationChange]:
    """Old conversation turns unrelated to the user's goal (facts are only ever merged, never dropped)."""
    if not len(memories):
        return []
    relevance = embeddings @ goal_vector
    cutoff = now - settings.turn_max_age_days * 86400
    return [
        CurationChange(
            "drop_irrelevant",
            (memory,),
            (),
            f"turn older than {settings.turn_max_age_days:g} days, similarity to user_goal {relevance[index]:.2f}",
        )
        for index, memory in enumerate(memories)
        if index not in gone
        and memory.kind == "turn"
        and memory.updated_at < cutoff
        and relevance[index] < settings.goal_relevance_floor
    ]
