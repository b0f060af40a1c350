"""The memory service: the one interface the rest of the server uses for `nightly` memory.

Groups are owned by the API key that created them: every call names the owner,
and a group of another owner is simply not found (its name is not even revealed).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from server.config import MemorySettings, QuotaSettings
from server.gateway.errors import QuotaExceeded
from server.memory.curation import Consolidate, plan_curation
from server.memory.embedder import Embedder
from server.memory.errors import GroupNotFound, MemoryNotFound
from server.memory.recall import (
    Candidate,
    Weights,
    extract_facts,
    lexical_query,
    memory_block,
    memory_line,
    prompt_order,
    rank,
    statements,
    time_window,
    turn_text,
)
from server.memory.store import (
    AuditEntry,
    CurationChange,
    Memory,
    MemoryGroup,
    MemoryStore,
    NewMemory,
    Speaker,
)
from server.memory.updates import (
    JUDGE_SYSTEM,
    Decision,
    Existing,
    attribute,
    decide,
    judge_prompt,
    named_subject,
    parse_judgement,
    relation_of,
)
from server.observability.metrics import Metrics

logger = logging.getLogger(__name__)
CURATION_CLAIM_S = 600.0  # a group curated this recently is skipped by the schedule (servers share one run)

GOAL_CACHE_SIZE = 256
UPDATE_CANDIDATES = 8  # stored facts a new fact is compared with

# (system, prompt) -> the served model's answer; set when `memory.extraction: model`.
Judge = Callable[[str, str], Awaitable[str]]


@dataclass(frozen=True)
class ScoredMemory:
    memory: Memory
    score: float


@dataclass(frozen=True)
class Recalled:
    """What retrieval placed into a prompt: the block of text and the memories it lists."""

    block: str
    memories: tuple[Memory, ...]


@dataclass(frozen=True)
class CurationReport:
    run_id: str
    group: str
    examined: int
    applied: tuple[CurationChange, ...]
    skipped: int


def _name(group: MemoryGroup) -> str:
    return group.name


class MemoryService:
    def __init__(
        self, store: MemoryStore, embedder: Embedder, settings: MemorySettings, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self._background: set[asyncio.Task[None]] = set()
        self._curating: dict[int, asyncio.Lock] = {}
        self._goal_vectors: dict[str, np.ndarray] = {}  # insertion order = recency
        self.judge: Judge | None = None  # the served model's judgement of knowledge updates, when configured
        self.weights = Weights(
            lexical=settings.lexical_weight,
            goal=settings.goal_weight,
            third_party=settings.third_party_penalty,
            in_window=settings.time_weight,
            recency=settings.recency_weight,
        )

    async def _group(self, owner: str, name: str) -> MemoryGroup:
        group = await self.store.get_group(owner, name)
        if group is None:
            raise GroupNotFound(name)
        return group

    # retrieval

    async def search(
        self, owner: str, name: str, query: str, limit: int, now: float | None = None
    ) -> list[ScoredMemory]:
        """The group's memories best matching `query`; `now` (default: the clock) anchors "last week" etc."""
        group = await self._group(owner, name)
        return await self._search(group, query, limit, group.user_goal, now)

    async def _vectors(self, query: str, user_goal: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The query's embedding, and the goal's (cached: an agent sends the same goal on every request)."""
        if not user_goal:
            return (await self.embedder.embed_queries([query]))[0], None
        goal = self._goal_vectors.pop(user_goal, None)
        if goal is None:
            vector, goal = await self.embedder.embed_queries([query, user_goal])
        else:
            [vector] = await self.embedder.embed_queries([query])
        self._goal_vectors[user_goal] = goal
        while len(self._goal_vectors) > GOAL_CACHE_SIZE:
            self._goal_vectors.pop(next(iter(self._goal_vectors)))
        return vector, goal

    async def _search(
        self, group: MemoryGroup, query: str, limit: int, user_goal: str, now: float | None = None
    ) -> list[ScoredMemory]:
        """Dense (HNSW) and lexical (BM25) candidates, ranked by `recall.rank`.

        Weak matches (cosine below `min_similarity`, no shared word) are left out, but never all of
        them: the best `min_results` are always kept, so a group with memories never answers nothing.
        """
        settings = self.settings

        # The lexical search runs while the query is embedded: retrieval costs the longer of the two, not both.
        (vector, goal), lexical = await asyncio.gather(
            self._vectors(query, user_goal),
            self.store.lexical_search(group, lexical_query(query), settings.candidates),
        )
        relevance = dict(lexical)
        rows = await self.store.candidates(group, vector, settings.candidates, list(relevance))
        memories = {memory_id: memory for memory_id, (memory, _) in rows.items()}
        ids = list(rows)
        embeddings = np.stack([embedding for _, embedding in rows.values()]) if rows else np.zeros((0, len(vector)))
        similarities = (embeddings @ vector).tolist()
        goal_similarities = (embeddings @ goal).tolist() if goal is not None else [0.0] * len(ids)
        candidates = [
            Candidate(
                memory_id,
                memories[memory_id].text,
                similarity,
                relevance.get(memory_id, 0.0),
                goal_similarity,
                memories[memory_id].kind,
                memories[memory_id].created_at,
                memories[memory_id].source_request_id,
            )
            for memory_id, similarity, goal_similarity in zip(ids, similarities, goal_similarities, strict=True)
        ]
        window = time_window(query, time.time() if now is None else now)
        ranked = rank(query, candidates, self.weights, window)
        kept = [
            (candidate, score)
            for position, (candidate, score) in enumerate(ranked)
            if position < settings.min_results
            or candidate.similarity >= settings.min_similarity
            or candidate.id in relevance
        ]
        return [ScoredMemory(memories[candidate.id], score) for candidate, score in kept[:limit]]

    async def recall(
        self,
        owner: str,
        name: str,
        user_goal: str,
        query: str,
        count_tokens: Callable[[str], int],
        top_k: int | None = None,
    ) -> Recalled:
        """The group's memories most relevant to `query`, as a block within the token budget.

        The chat path places `block` with `engine.prompt.with_context_block`: after the stable prefix."""
        started = time.perf_counter()
        recalled = await self._recall(owner, name, user_goal, query, count_tokens, top_k or self.settings.top_k)
        self.metrics.recalled(time.perf_counter() - started, len(recalled.memories))
        return recalled

    async def _recall(
        self, owner: str, name: str, user_goal: str, query: str, count_tokens: Callable[[str], int], top_k: int
    ) -> Recalled:
        group = await self.store.get_group(owner, name)
        if group is None or group.memory_count == 0 or not query.strip():
            return Recalled("", ())
        now = time.time()
        hits = await self._search(group, query, top_k, user_goal, now)
        budget = self.settings.prompt_token_budget
        line_of = {
            hit.memory.id: memory_line(hit.memory.text, hit.memory.kind, hit.memory.created_at, now) for hit in hits
        }
        _, used = memory_block(list(line_of.values()), budget, count_tokens)  # the best that fit the budget ...
        chosen = prompt_order([hit.memory for hit in hits[:used]])  # ... listed oldest first (cache-stable)
        block, shown = memory_block([line_of[memory.id] for memory in chosen], budget, count_tokens)
        return Recalled(block, tuple(chosen[:shown]))

    # write-back

    def remember_later(
        self,
        owner: str,
        name: str,
        user_goal: str,
        request_id: str,
        user_text: str,
        answer: str,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> asyncio.Task[None]:
        """Store the exchange off the response's path, then run `then` (adaption's trigger).

        Failures are logged, never raised to the client. The caller may wait for the returned task
        (never cancelling it) so the exchange is stored before the response's last byte.
        """

        async def remember_then() -> None:
            try:
                await self.remember(owner, name, user_goal, request_id, user_text, answer)
            except Exception:
                self.metrics.wrote_back(False)
                raise
            self.metrics.wrote_back(True)
            if then is not None:
                await then()

        task = asyncio.create_task(remember_then())
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("memory write-back failed", exc_info=task.exception())

    async def remember(
        self,
        owner: str,
        name: str,
        user_goal: str,
        request_id: str,
        user_text: str,
        answer: str,
    ) -> list[Decision]:
        """Store what the user said in one exchange: the facts in it (knowledge updates applied), and the turn.

        Only the user's words are ever matched by retrieval: the assistant's answer is kept with the turn
        (for adaption's training pairs) but never embedded nor indexed, so a wrong answer cannot become
        evidence for the next one. A turn that only asked something is kept but never retrieved.
        """
        group = await self.store.ensure_group(owner, name, user_goal)
        said = statements(user_text)
        facts = [*extract_facts(user_text)]
        facts += await self._attributed(group, [sentence for sentence in said if sentence not in facts])
        searchable = " ".join(said) or None
        vectors = await self.embedder.embed([*facts, searchable or user_text])
        decisions = []
        new: list[NewMemory] = []
        changes: list[CurationChange] = []
        for fact, vector in zip(facts, vectors, strict=False):
            fresh = NewMemory(fact, "fact", vector, request_id)
            decision, target = await self._decide(group, fact, vector)
            decisions.append(decision)
            if decision.action == "ADD":
                new.append(fresh)
            elif decision.action in ("UPDATE", "DELETE") and target is not None:
                changes.append(CurationChange(decision.action.lower(), (target,), (fresh,), decision.reason))
        if user_text.strip():
            new.append(NewMemory(turn_text(user_text, answer), "turn", vectors[-1], request_id, search_text=searchable))
        if changes:
            await self.store.apply(group, f"upd_{request_id}", changes, curated=False)
        await self.store.add(group, new)
        await self.store.count_call(group)
        self.metrics.memories_stored(Counter(memory.kind for memory in new))
        return decisions

    async def _attributed(self, group: MemoryGroup, sentences: Sequence[str]) -> list[str]:
        """Statements about someone the user named before ("Ana is allergic ..." after "my wife Ana ...")."""
        facts = []
        for sentence in sentences:
            person = named_subject(sentence)
            if person is None:
                continue
            lexical = await self.store.lexical_search(group, f'"{person}"', 20)
            known = await self.store.fetch(group, [memory_id for memory_id, _ in lexical])
            relation = relation_of(person, [memory.text for memory in sorted(known.values(), key=lambda m: m.id)])
            if relation is not None:
                facts.append(attribute(sentence, person, relation))
        return facts

    async def _decide(self, group: MemoryGroup, fact: str, vector: np.ndarray) -> tuple[Decision, Memory | None]:
        """ADD / UPDATE / DELETE / NOOP for a new fact against the stored facts nearest to it."""
        settings = self.settings
        dense = await self.store.dense_search(group, vector, UPDATE_CANDIDATES)
        embeddings = await self.store.fetch_embeddings(group, [memory_id for memory_id, _ in dense])
        memories = await self.store.fetch(group, list(embeddings))
        existing = sorted(
            (
                Existing(memory_id, memories[memory_id].text, float(embedding @ vector))
                for memory_id, embedding in embeddings.items()
                if memory_id in memories and memories[memory_id].kind != "turn"
            ),
            key=lambda memory: -memory.similarity,
        )
        decision = None
        if self.judge is not None and existing:
            try:
                decision = parse_judgement(await self.judge(JUDGE_SYSTEM, judge_prompt(fact, existing)), existing)
            except Exception:  # the model's judgement is a refinement: the rules still decide
                logger.exception("memory update judgement failed; rules decide")
        if decision is None:
            decision = decide(
                fact,
                existing,
                duplicate_similarity=settings.duplicate_similarity,
                update_similarity=settings.update_similarity,
                replace_similarity=settings.replace_similarity,
            )
        return decision, memories.get(decision.target) if decision.target is not None else None

    async def drain(self) -> None:
        """Wait for pending write-backs (at shutdown, so none is lost)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # management API

    async def group(self, owner: str, name: str) -> MemoryGroup:
        return await self._group(owner, name)

    async def check_quota(self, owner: str, name: str, adding: int, quotas: QuotaSettings) -> None:
        """QuotaExceeded (403) when `owner` would own more memory groups, or hold more memories in the group `name`,
        than `quotas` allow (admins are not limited: the caller skips the check for them)."""
        try:
            group = await self._group(owner, name)
        except GroupNotFound:
            owned = sum(1 for group in await self.store.list_groups() if group.owner == owner)
            if owned >= quotas.memory_groups:
                raise QuotaExceeded.of("memory groups", quotas.memory_groups, "memory_group") from None
            return
        if group.memory_count + adding > quotas.memories_per_group:
            raise QuotaExceeded.of(f"memories in the group `{name}`", quotas.memories_per_group, "text")

    async def groups(self, owner: str) -> list[MemoryGroup]:
        """The owner's groups, by name."""
        return sorted((group for group in await self.store.list_groups() if group.owner == owner), key=_name)

    async def delete_group(self, owner: str, name: str) -> None:
        await self.store.delete_group(await self._group(owner, name))

    async def add(
        self,
        owner: str,
        name: str,
        texts: Sequence[str],
        user_goal: str | None,
        request_id: str,
        said_at: Sequence[float] | None = None,
        speaker: Speaker = "api",
    ) -> list[Memory]:
        """Notes given through the memory API; `said_at` (epoch seconds, one per text) dates an import."""
        group = await self.store.ensure_group(owner, name, user_goal)
        vectors = await self.embedder.embed(texts)
        dates = list(said_at) if said_at is not None else [None] * len(texts)
        added = await self.store.add(
            group,
            [
                NewMemory(text, "note", vector, request_id, speaker=speaker, created_at=at)
                for text, vector, at in zip(texts, vectors, dates, strict=True)
            ],
        )
        self.metrics.memories_stored({"note": len(added)})
        return added

    async def list_memories(self, owner: str, name: str, limit: int, after: int | None) -> list[Memory]:
        return await self.store.list_memories(await self._group(owner, name), limit, after)

    async def get(self, owner: str, name: str, memory_id: int) -> Memory:
        memory = await self.store.get(await self._group(owner, name), memory_id)
        if memory is None:
            raise MemoryNotFound(name, memory_id)
        return memory

    async def update(self, owner: str, name: str, memory_id: int, text: str) -> Memory:
        group = await self._group(owner, name)
        [vector] = await self.embedder.embed([text])
        memory = await self.store.update(group, memory_id, text, vector)
        if memory is None:
            raise MemoryNotFound(name, memory_id)
        return memory

    async def delete(self, owner: str, name: str, memory_id: int) -> None:
        if not await self.store.delete(await self._group(owner, name), memory_id):
            raise MemoryNotFound(name, memory_id)

    async def audit(self, owner: str, name: str, limit: int) -> list[AuditEntry]:
        return await self.store.audit(await self._group(owner, name), limit)

    # curation

    async def curate(self, owner: str, name: str, consolidate: Consolidate) -> CurationReport:
        return await self._curate(await self._group(owner, name), consolidate)

    async def curate_all(self, consolidate: Consolidate) -> list[CurationReport]:
        """Curate every group not curated in the last CURATION_CLAIM_S (by this or another server)."""
        reports = []
        for group in await self.store.list_groups():
            try:
                if not await self.store.claim_curation(group, CURATION_CLAIM_S):
                    continue
                reports.append(await self._curate(group, consolidate))
            except Exception:  # one group's failure must not stop the others
                logger.exception("curation of memory group %s failed", group.id)
        return reports

    async def _curate(self, group: MemoryGroup, consolidate: Consolidate) -> CurationReport:
        async with self._curating.setdefault(group.id, asyncio.Lock()):
            run_id = f"cur_{uuid.uuid4().hex[:16]}"
            snapshot = await self.store.snapshot(group)
            goal_vector = (await self.embedder.embed([group.user_goal]))[0] if group.user_goal else None
            plan = await plan_curation(
                snapshot, goal_vector, self.settings, consolidate, self.embedder.embed, asyncio.to_thread
            )
            applied = await self.store.apply(group, run_id, plan.changes)
            self.metrics.curated(Counter(change.action for change in applied))
            logger.info(
                "curated memory group %s: %d memories examined, %d changes applied, %d skipped",
                group.id,
                plan.examined,
                len(applied),
                len(plan.changes) - len(applied),
            )
            return CurationReport(run_id, group.name, plan.examined, tuple(applied), len(plan.changes) - len(applied))
