"""Where memories live: the `MemoryStore` interface, on SQLite (embedded) or PostgreSQL (shared by servers).

Both keep the truth (memories with their embeddings, groups, the audit log) in
tables written by the same SQL (`MemoryDatabase`); they differ in search:
- SQLite: an FTS5 table for lexical search, and a usearch HNSW index per group
  for dense search. The index is a cache: rebuilt from SQLite when its saved
  copy is missing or older than the group's `revision`, so a crash can never
  lose data.
- PostgreSQL: embeddings in a pgvector column searched exactly (cosine
  distance, per group), a generated tsvector column for lexical search, so
  every server sees every write at once.
All database and index work runs on the store's own thread, off the event loop.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from usearch.index import Index

from server.storage import Database, Location, Row, is_postgres

MemoryKind = Literal["fact", "turn", "note", "consolidated"]
Speaker = Literal["user", "api", "assistant"]

EXACT_SEARCH_MAX = 1000  # 384-dim rows: 0.23 ms brute force against 0.27 ms by HNSW at 1,000 (this box, one core)

MIGRATIONS = (
    """
    CREATE TABLE memory_groups (
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        user_goal TEXT NOT NULL DEFAULT '',
        call_count INTEGER NOT NULL DEFAULT 0,
        memory_count INTEGER NOT NULL DEFAULT 0,
        revision INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        curated_at REAL,
        UNIQUE (owner, name)
    );
    CREATE TABLE memories (
        id INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES memory_groups(id) ON DELETE CASCADE,
        text TEXT NOT NULL,
        kind TEXT NOT NULL,
        source_request_id TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        embedding BLOB NOT NULL
    );
    CREATE INDEX memories_by_group ON memories (group_id, id);
    CREATE VIRTUAL TABLE memories_fts USING fts5 (
        text, content='memories', content_rowid='id', tokenize='porter unicode61'
    );
    -- memory_count is kept by triggers: counting 100k rows on every search costs milliseconds.
    CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts (rowid, text) VALUES (new.id, new.text);
        UPDATE memory_groups SET memory_count = memory_count + 1 WHERE id = new.group_id;
    END;
    CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
        UPDATE memory_groups SET memory_count = memory_count - 1 WHERE id = old.group_id;
    END;
    CREATE TRIGGER memories_fts_update AFTER UPDATE OF text ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO memories_fts (rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TABLE memory_audit (
        id INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES memory_groups(id) ON DELETE CASCADE,
        run_id TEXT NOT NULL,
        action TEXT NOT NULL,
        removed TEXT NOT NULL,
        added TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    # Who said each memory, and the text retrieval matches (a turn: the user's words only, never the
    # assistant's; NULL: kept but never retrieved, e.g. a turn that only asked a question).
    """
    ALTER TABLE memories ADD COLUMN speaker TEXT NOT NULL DEFAULT 'user';
    ALTER TABLE memories ADD COLUMN search_text TEXT;
    UPDATE memories SET search_text = CASE
        WHEN kind = 'turn' AND text LIKE 'User: %' AND instr(text, char(10) || 'Assistant: ') > 0
            THEN substr(text, 7, instr(text, char(10) || 'Assistant: ') - 7)
        ELSE text END;
    DROP TRIGGER memories_fts_insert;
    DROP TRIGGER memories_fts_delete;
    DROP TRIGGER memories_fts_update;
    DROP TABLE memories_fts;
    CREATE VIRTUAL TABLE memories_fts USING fts5 (
        search_text, content='memories', content_rowid='id', tokenize='porter unicode61'
    );
    INSERT INTO memories_fts (memories_fts) VALUES ('rebuild');
    CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts (rowid, search_text) VALUES (new.id, coalesce(new.search_text, ''));
        UPDATE memory_groups SET memory_count = memory_count + 1 WHERE id = new.group_id;
    END;
    CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, search_text)
            VALUES ('delete', old.id, coalesce(old.search_text, ''));
        UPDATE memory_groups SET memory_count = memory_count - 1 WHERE id = old.group_id;
    END;
    CREATE TRIGGER memories_fts_update AFTER UPDATE OF search_text ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, search_text)
            VALUES ('delete', old.id, coalesce(old.search_text, ''));
        INSERT INTO memories_fts (rowid, search_text) VALUES (new.id, coalesce(new.search_text, ''));
    END;
    """,
)


# The same tables in PostgreSQL: embeddings in a pgvector column, a generated tsvector for lexical search
# (english stemming, as FTS5's porter tokenizer), memory_count kept by a trigger as in SQLite.
POSTGRES_MIGRATIONS = (
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE memory_groups (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        user_goal TEXT NOT NULL DEFAULT '',
        call_count BIGINT NOT NULL DEFAULT 0,
        memory_count BIGINT NOT NULL DEFAULT 0,
        revision BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        curated_at DOUBLE PRECISION,
        UNIQUE (owner, name)
    );
    CREATE TABLE memories (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        group_id BIGINT NOT NULL REFERENCES memory_groups(id) ON DELETE CASCADE,
        text TEXT NOT NULL,
        kind TEXT NOT NULL,
        source_request_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        embedding vector NOT NULL,
        speaker TEXT NOT NULL DEFAULT 'user',
        search_text TEXT,
        lexical tsvector GENERATED ALWAYS AS (to_tsvector('english', coalesce(search_text, ''))) STORED
    );
    CREATE INDEX memories_by_group ON memories (group_id, id);
    CREATE INDEX memories_lexical ON memories USING gin (lexical);
    CREATE FUNCTION memories_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            UPDATE memory_groups SET memory_count = memory_count + 1 WHERE id = NEW.group_id;
            RETURN NEW;
        END IF;
        UPDATE memory_groups SET memory_count = memory_count - 1 WHERE id = OLD.group_id;
        RETURN OLD;
    END $$;
    CREATE TRIGGER memories_count AFTER INSERT OR DELETE ON memories FOR EACH ROW EXECUTE FUNCTION memories_count();
    CREATE TABLE memory_audit (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        group_id BIGINT NOT NULL REFERENCES memory_groups(id) ON DELETE CASCADE,
        run_id TEXT NOT NULL,
        action TEXT NOT NULL,
        removed TEXT NOT NULL,
        added TEXT NOT NULL,
        reason TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    """,
)


@dataclass(frozen=True)
class MemoryGroup:
    id: int
    owner: str
    name: str
    user_goal: str
    call_count: int
    memory_count: int
    created_at: float
    curated_at: float | None


@dataclass(frozen=True)
class Memory:
    id: int
    text: str
    kind: MemoryKind
    source_request_id: str | None
    created_at: float  # when it was said (a dated import may set it)
    updated_at: float
    speaker: Speaker = "user"


@dataclass(frozen=True)
class NewMemory:
    """`embedding` is of `search_text` (what retrieval matches); `search_text` None: never retrieved."""

    text: str
    kind: MemoryKind
    embedding: np.ndarray
    source_request_id: str | None = None
    speaker: Speaker = "user"
    created_at: float | None = None  # default: now
    search_text: str | None = ""  # "": the text itself

    @property
    def indexed_text(self) -> str | None:
        return self.text if self.search_text == "" else self.search_text


@dataclass(frozen=True)
class Snapshot:
    """A group's memories with their embeddings (rows of `embeddings`), for curation."""

    memories: tuple[Memory, ...]
    embeddings: np.ndarray


@dataclass(frozen=True)
class CurationChange:
    """Remove `removed` (if all are still unchanged since `seen_at`) and add `added`, as one step."""

    action: str
    removed: tuple[Memory, ...]
    added: tuple[NewMemory, ...]
    reason: str


@dataclass(frozen=True)
class AuditEntry:
    id: int
    run_id: str
    action: str
    removed: list[dict]
    added: list[dict]
    reason: str
    at: float


class MemoryStore(Protocol):
    """What the memory service needs from storage (`SQLiteMemoryStore` or `PostgresMemoryStore`)."""

    async def get_group(self, owner: str, name: str) -> MemoryGroup | None: ...
    async def ensure_group(self, owner: str, name: str, user_goal: str | None) -> MemoryGroup: ...
    async def list_groups(self) -> list[MemoryGroup]: ...
    async def delete_group(self, group: MemoryGroup) -> None: ...
    async def count_call(self, group: MemoryGroup) -> int: ...
    async def add(self, group: MemoryGroup, items: Sequence[NewMemory]) -> list[Memory]: ...
    async def get(self, group: MemoryGroup, memory_id: int) -> Memory | None: ...
    async def list_memories(self, group: MemoryGroup, limit: int, after: int | None) -> list[Memory]: ...
    async def update(self, group: MemoryGroup, memory_id: int, text: str, embedding: np.ndarray) -> Memory | None: ...
    async def delete(self, group: MemoryGroup, memory_id: int) -> bool: ...
    async def search(
        self, group: MemoryGroup, vector: np.ndarray, lexical_query: str, k: int
    ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]: ...
    async def dense_search(self, group: MemoryGroup, vector: np.ndarray, k: int) -> list[tuple[int, float]]: ...
    async def lexical_search(self, group: MemoryGroup, lexical_query: str, k: int) -> list[tuple[int, float]]: ...
    async def fetch(self, group: MemoryGroup, ids: Sequence[int]) -> dict[int, Memory]: ...
    async def candidates(
        self, group: MemoryGroup, vector: np.ndarray, k: int, also: Sequence[int]
    ) -> dict[int, tuple[Memory, np.ndarray]]: ...
    async def fetch_embeddings(self, group: MemoryGroup, ids: Sequence[int]) -> dict[int, np.ndarray]: ...
    async def snapshot(self, group: MemoryGroup) -> Snapshot: ...
    async def apply(
        self, group: MemoryGroup, run_id: str, changes: Sequence[CurationChange], curated: bool = True
    ) -> list[CurationChange]: ...
    async def audit(self, group: MemoryGroup, limit: int) -> list[AuditEntry]: ...
    async def claim_curation(self, group: MemoryGroup, within_s: float) -> bool: ...
    async def close(self) -> None: ...


def _memory(row: Row) -> Memory:
    return Memory(
        row["id"],
        row["text"],
        row["kind"],
        row["source_request_id"],
        row["created_at"],
        row["updated_at"],
        row["speaker"],
    )


def _memory_json(memory: Memory | NewMemory) -> dict:
    data = {"text": memory.text, "kind": memory.kind, "speaker": memory.speaker}
    if isinstance(memory, Memory):
        data |= {"id": memory.id, "created_at": memory.created_at}
    return data


_GROUP_COLUMNS = "g.id, g.owner, g.name, g.user_goal, g.call_count, g.memory_count, g.created_at, g.curated_at"
_MEMORY_COLUMNS = "id, text, kind, source_request_id, created_at, updated_at, speaker"


class MemoryDatabase(Database):
    """`MemoryStore` in SQL both engines run; subclasses search, and write and read embeddings their way."""

    SCHEMA = "memory"
    MIGRATIONS = MIGRATIONS
    VECTOR_PARAM: ClassVar[str] = "?"  # how an embedding parameter is written in SQL
    VECTOR_COLUMN: ClassVar[str] = "embedding"  # how the embedding column is read

    def __init__(self, location: Location, dimensions: int) -> None:
        super().__init__(location, "memory-store")
        self._dimensions = dimensions

    # what differs per engine

    @abstractmethod
    def _vector_value(self, vector: np.ndarray) -> object:
        """An embedding as the VECTOR_PARAM parameter."""

    @abstractmethod
    def _vectors(self, values: Sequence[Any]) -> np.ndarray:
        """Embeddings read from VECTOR_COLUMN, as rows of a float32 matrix."""

    @abstractmethod
    def _dense(self, group_id: int, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The `k` retrievable memories nearest to `vector`: (id, cosine similarity), best first."""

    @abstractmethod
    def _lexical(self, group_id: int, query: str, k: int) -> list[tuple[int, float]]:
        """The `k` best lexical matches of an FTS5-style query (quoted words joined by OR): (id, relevance)."""

    def _index_changed(
        self,
        group_id: int,
        revision: int,
        removed: Sequence[int] = (),
        added: Sequence[tuple[int, np.ndarray]] = (),
    ) -> None:
        """A committed change (revision - 1 -> revision), for a store that keeps an index beside the tables."""

    def _save_index(self, group_id: int) -> None:
        """Persist the group's index, for a store that keeps one."""

    def _forget_index(self, group_id: int) -> None:
        """The group is gone: drop its index, for a store that keeps one."""

    def _ids(self, column: str = "id") -> str:
        """`column IN` the ids of a JSON array parameter."""
        return f"{column} IN (SELECT CAST(value AS BIGINT) FROM {self.db.dialect.json_values.format('?')})"

    # groups

    async def get_group(self, owner: str, name: str) -> MemoryGroup | None:
        return await self._run(self._get_group, owner, name)

    def _get_group(self, owner: str, name: str) -> MemoryGroup | None:
        row = self.db.execute(
            f"SELECT {_GROUP_COLUMNS} FROM memory_groups g WHERE g.owner = ? AND g.name = ?", (owner, name)
        ).fetchone()
        return MemoryGroup(**dict(row)) if row else None

    async def ensure_group(self, owner: str, name: str, user_goal: str | None) -> MemoryGroup:
        return await self._run(self._ensure_group, owner, name, user_goal)

    def _ensure_group(self, owner: str, name: str, user_goal: str | None) -> MemoryGroup:
        # The latest goal given wins: it is what curation and retrieval steer by.
        self.db.execute(
            "INSERT INTO memory_groups (owner, name, user_goal, created_at) VALUES (?, ?, coalesce(?, ''), ?)"
            " ON CONFLICT (owner, name) DO UPDATE"
            " SET user_goal = coalesce(excluded.user_goal, memory_groups.user_goal)"
            if user_goal is not None
            else "INSERT INTO memory_groups (owner, name, user_goal, created_at) VALUES (?, ?, coalesce(?, ''), ?)"
            " ON CONFLICT (owner, name) DO NOTHING",
            (owner, name, user_goal, time.time()),
        )
        group = self._get_group(owner, name)
        assert group is not None
        return group

    async def list_groups(self) -> list[MemoryGroup]:
        return await self._run(
            lambda: [
                MemoryGroup(**dict(row)) for row in self.db.execute(f"SELECT {_GROUP_COLUMNS} FROM memory_groups g")
            ]
        )

    async def delete_group(self, group: MemoryGroup) -> None:
        await self._run(self._delete_group, group.id)

    def _delete_group(self, group_id: int) -> None:
        self.db.execute("DELETE FROM memory_groups WHERE id = ?", (group_id,))
        self._forget_index(group_id)

    async def count_call(self, group: MemoryGroup) -> int:
        return await self._run(
            lambda: self.db.execute(
                "UPDATE memory_groups SET call_count = call_count + 1 WHERE id = ? RETURNING call_count", (group.id,)
            ).fetchone()["call_count"]
        )

    # memories

    async def add(self, group: MemoryGroup, items: Sequence[NewMemory]) -> list[Memory]:
        return await self._run(self._add, group.id, items)

    def _add(self, group_id: int, items: Sequence[NewMemory]) -> list[Memory]:
        with self._transaction():
            added = self._insert(group_id, items)
            revision = self._bump(group_id)
        self._index_changed(
            group_id,
            revision,
            added=[(m.id, item.embedding) for m, item in zip(added, items, strict=True) if item.indexed_text],
        )
        return added

    def _insert(self, group_id: int, items: Sequence[NewMemory]) -> list[Memory]:
        now = time.time()
        added = []
        for item in items:
            said_at = now if item.created_at is None else item.created_at
            row = self.db.execute(
                "INSERT INTO memories (group_id, text, kind, source_request_id, created_at, updated_at, embedding,"
                f" speaker, search_text) VALUES (?, ?, ?, ?, ?, ?, {self.VECTOR_PARAM}, ?, ?)"
                f" RETURNING {_MEMORY_COLUMNS}",
                (
                    group_id,
                    item.text,
                    item.kind,
                    item.source_request_id,
                    said_at,
                    max(now, said_at),
                    self._vector_value(item.embedding),
                    item.speaker,
                    item.indexed_text or None,
                ),
            ).fetchone()
            added.append(_memory(row))
        return added

    async def get(self, group: MemoryGroup, memory_id: int) -> Memory | None:
        found = await self.fetch(group, [memory_id])
        return found.get(memory_id)

    async def fetch(self, group: MemoryGroup, ids: Sequence[int]) -> dict[int, Memory]:
        return await self._run(self._fetch, group.id, list(ids))

    def _fetch(self, group_id: int, ids: list[int]) -> dict[int, Memory]:
        rows = self.db.execute(
            f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE group_id = ? AND {self._ids()}",
            (group_id, json.dumps(ids)),
        )
        return {row["id"]: _memory(row) for row in rows}

    async def candidates(
        self, group: MemoryGroup, vector: np.ndarray, k: int, also: Sequence[int]
    ) -> dict[int, tuple[Memory, np.ndarray]]:
        """A retrieval's store work in one call: the rows and embeddings of the `k` dense hits (as `dense_search`)
        and of the memories `also` (the lexical hits), read in one query."""
        return await self._run(self._candidates, group.id, vector, k, list(also))

    def _candidates(
        self, group_id: int, vector: np.ndarray, k: int, also: list[int]
    ) -> dict[int, tuple[Memory, np.ndarray]]:
        dense = self._dense(group_id, vector, k)
        ids = list(dict.fromkeys([memory_id for memory_id, _ in dense] + also))
        rows = self.db.execute(
            f"SELECT {_MEMORY_COLUMNS}, {self.VECTOR_COLUMN} AS embedding FROM memories"
            f" WHERE group_id = ? AND {self._ids()}",
            (group_id, json.dumps(ids)),
        ).fetchall()
        vectors = self._vectors([row["embedding"] for row in rows])
        return {row["id"]: (_memory(row), vectors[i]) for i, row in enumerate(rows)}

    async def fetch_embeddings(self, group: MemoryGroup, ids: Sequence[int]) -> dict[int, np.ndarray]:
        return await self._run(self._fetch_embeddings, group.id, list(ids))

    def _fetch_embeddings(self, group_id: int, ids: list[int]) -> dict[int, np.ndarray]:
        rows = self.db.execute(
            f"SELECT id, {self.VECTOR_COLUMN} AS embedding FROM memories WHERE group_id = ? AND {self._ids()}",
            (group_id, json.dumps(ids)),
        ).fetchall()
        return dict(zip((row["id"] for row in rows), self._vectors([row["embedding"] for row in rows]), strict=True))

    async def list_memories(self, group: MemoryGroup, limit: int, after: int | None) -> list[Memory]:
        return await self._run(
            lambda: [
                _memory(row)
                for row in self.db.execute(
                    f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE group_id = ? AND id > ? ORDER BY id LIMIT ?",
                    (group.id, after or 0, limit),
                )
            ]
        )

    async def update(self, group: MemoryGroup, memory_id: int, text: str, embedding: np.ndarray) -> Memory | None:
        return await self._run(self._update, group.id, memory_id, text, embedding)

    def _update(self, group_id: int, memory_id: int, text: str, embedding: np.ndarray) -> Memory | None:
        with self._transaction():
            row = self.db.execute(
                f"UPDATE memories SET text = ?, search_text = ?, embedding = {self.VECTOR_PARAM}, updated_at = ?"
                f" WHERE group_id = ? AND id = ? RETURNING {_MEMORY_COLUMNS}",
                (text, text, self._vector_value(embedding), time.time(), group_id, memory_id),
            ).fetchone()
            if row is None:
                return None
            revision = self._bump(group_id)
        self._index_changed(group_id, revision, removed=[memory_id], added=[(memory_id, embedding)])
        return _memory(row)

    async def delete(self, group: MemoryGroup, memory_id: int) -> bool:
        return await self._run(self._delete, group.id, memory_id)

    def _delete(self, group_id: int, memory_id: int) -> bool:
        with self._transaction():
            deleted = self.db.execute(
                "DELETE FROM memories WHERE group_id = ? AND id = ?", (group_id, memory_id)
            ).rowcount
            if not deleted:
                return False
            revision = self._bump(group_id)
        self._index_changed(group_id, revision, removed=[memory_id])
        return True

    # search

    async def search(
        self, group: MemoryGroup, vector: np.ndarray, lexical_query: str, k: int
    ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """(dense hits as (id, cosine similarity), lexical hits as (id, relevance)), best first, `k` of each."""
        return await self._run(self._search, group.id, vector, lexical_query, k)

    def _search(
        self, group_id: int, vector: np.ndarray, lexical_query: str, k: int
    ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        return self._dense(group_id, vector, k), self._lexical(group_id, lexical_query, k) if lexical_query else []

    async def dense_search(self, group: MemoryGroup, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The dense half of `search` alone."""
        return await self._run(self._dense, group.id, vector, k)

    async def lexical_search(self, group: MemoryGroup, lexical_query: str, k: int) -> list[tuple[int, float]]:
        """The lexical half of `search` alone: it needs no embedding, so it can run while the query is embedded."""
        return await self._run(self._lexical, group.id, lexical_query, k) if lexical_query else []

    # curation

    async def snapshot(self, group: MemoryGroup) -> Snapshot:
        return await self._run(self._snapshot, group.id)

    def _snapshot(self, group_id: int) -> Snapshot:
        rows = self.db.execute(
            f"SELECT {_MEMORY_COLUMNS}, {self.VECTOR_COLUMN} AS embedding FROM memories WHERE group_id = ? ORDER BY id",
            (group_id,),
        ).fetchall()
        return Snapshot(tuple(_memory(row) for row in rows), self._vectors([row["embedding"] for row in rows]))

    async def apply(
        self, group: MemoryGroup, run_id: str, changes: Sequence[CurationChange], curated: bool = True
    ) -> list[CurationChange]:
        """Apply curation (or write-time update, `curated=False`) changes, each with its audit entry."""
        return await self._run(self._apply, group.id, run_id, changes, curated)

    def _apply(
        self, group_id: int, run_id: str, changes: Sequence[CurationChange], curated: bool = True
    ) -> list[CurationChange]:
        """All changes in one transaction, each skipped if a memory it removes changed since the snapshot."""
        applied: list[CurationChange] = []
        removed_ids: list[int] = []
        added: list[tuple[int, np.ndarray]] = []
        now = time.time()
        with self._transaction():
            for change in changes:
                current = self._fetch(group_id, [memory.id for memory in change.removed])
                if any(current.get(memory.id) != memory for memory in change.removed):
                    continue  # edited or deleted meanwhile: the plan no longer holds
                for memory in change.removed:
                    self.db.execute("DELETE FROM memories WHERE id = ?", (memory.id,))
                if change.action in ("update", "delete"):
                    # The turns a replaced fact was said in would still tell the old story: kept, not retrieved.
                    removed_ids += self._retire_turns(group_id, change.removed)
                inserted = self._insert(group_id, change.added)
                self.db.execute(
                    "INSERT INTO memory_audit (group_id, run_id, action, removed, added, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        group_id,
                        run_id,
                        change.action,
                        json.dumps([_memory_json(memory) for memory in change.removed]),
                        json.dumps([_memory_json(memory) for memory in inserted]),
                        change.reason,
                        now,
                    ),
                )
                removed_ids += [memory.id for memory in change.removed]
                added += [
                    (memory.id, item.embedding)
                    for memory, item in zip(inserted, change.added, strict=True)
                    if item.indexed_text
                ]
                applied.append(change)
            if curated:
                self.db.execute("UPDATE memory_groups SET curated_at = ? WHERE id = ?", (now, group_id))
            revision = self._bump(group_id)
        self._index_changed(group_id, revision, removed=removed_ids, added=added)
        self._save_index(group_id)
        return applied

    def _retire_turns(self, group_id: int, facts: Sequence[Memory]) -> list[int]:
        requests = [memory.source_request_id for memory in facts if memory.source_request_id]
        if not requests:
            return []
        return [
            row["id"]
            for row in self.db.execute(
                "UPDATE memories SET search_text = NULL WHERE group_id = ? AND kind = 'turn'"
                " AND search_text IS NOT NULL AND source_request_id IN"
                f" (SELECT value FROM {self.db.dialect.json_values.format('?')}) RETURNING id",
                (group_id, json.dumps(requests)),
            ).fetchall()
        ]

    async def audit(self, group: MemoryGroup, limit: int) -> list[AuditEntry]:
        return await self._run(
            lambda: [
                AuditEntry(
                    row["id"],
                    row["run_id"],
                    row["action"],
                    json.loads(row["removed"]),
                    json.loads(row["added"]),
                    row["reason"],
                    row["at"],
                )
                for row in self.db.execute(
                    "SELECT * FROM memory_audit WHERE group_id = ? ORDER BY id DESC LIMIT ?", (group.id, limit)
                )
            ]
        )

    async def claim_curation(self, group: MemoryGroup, within_s: float) -> bool:
        """Mark the group as being curated now, unless some server did so in the last `within_s` (False): of
        servers sharing the database and curating on the same schedule, one curates each group."""
        return await self._run(
            lambda: (
                self.db.execute(
                    "UPDATE memory_groups SET curated_at = ? WHERE id = ? AND coalesce(curated_at, 0) < ?",
                    (time.time(), group.id, time.time() - within_s),
                ).rowcount
                == 1
            )
        )

    # internals

    def _transaction(self) -> AbstractContextManager[None]:
        return self.db.transaction()

    def _bump(self, group_id: int) -> int:
        return self.db.execute(
            "UPDATE memory_groups SET revision = revision + 1 WHERE id = ? RETURNING revision", (group_id,)
        ).fetchone()["revision"]

    def _revision(self, group_id: int) -> int:
        row = self.db.execute("SELECT revision FROM memory_groups WHERE id = ?", (group_id,)).fetchone()
        return row["revision"] if row else 0


class SQLiteMemoryStore(MemoryDatabase):
    """`MemoryStore` on one SQLite file (WAL), with per-group HNSW indexes saved next to it."""

    def __init__(self, path: Path, dimensions: int) -> None:
        super().__init__(path, dimensions)
        self._index_dir = path.with_name(path.name + ".indexes")
        self._indexes: dict[int, tuple[Index, int]] = {}  # group id -> (index, revision it reflects)

    def _open(self) -> None:
        super()._open()
        self._index_dir.mkdir(parents=True, exist_ok=True)

    def _close(self) -> None:
        for group_id in list(self._indexes):
            self._save_index(group_id)
        super()._close()

    def _vector_value(self, vector: np.ndarray) -> bytes:
        return _blob(vector)

    def _vectors(self, values: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(values), dtype=np.float32).reshape(len(values), self._dimensions)

    def _dense(self, group_id: int, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        index = self._index(group_id)
        if not len(index):
            return []
        # Up to EXACT_SEARCH_MAX memories a brute-force scan costs no more than the graph and never misses a
        # neighbour (HNSW is approximate: it swapped near-ties in a 200-memory group).
        matches = index.search(vector, min(k, len(index)), exact=len(index) <= EXACT_SEARCH_MAX)
        return [
            (int(key), 1.0 - float(distance)) for key, distance in zip(matches.keys, matches.distances, strict=True)
        ]

    def _lexical(self, group_id: int, query: str, k: int) -> list[tuple[int, float]]:
        # FTS5's bm25() is negative, lower is better: negated, it is a relevance. The group is checked
        # in the (group_id, id) index, not the table: its rows carry the embeddings, and reading one per
        # match made a common word cost tens of milliseconds at 100k memories.
        return [
            (row[0], -row[1])
            for row in self.db.execute(
                "SELECT m.id, bm25(memories_fts) FROM memories_fts f"
                " JOIN memories m INDEXED BY memories_by_group ON m.id = f.rowid"
                " WHERE memories_fts MATCH ? AND m.group_id = ? ORDER BY bm25(memories_fts) LIMIT ?",
                (query, group_id, k),
            )
        ]

    # the HNSW index: a cache of the table, per group

    def _forget_index(self, group_id: int) -> None:
        self._indexes.pop(group_id, None)
        for saved in self._index_dir.glob(f"{group_id}-*.usearch"):
            saved.unlink(missing_ok=True)

    def _new_index(self) -> Index:
        return Index(
            ndim=self._dimensions, metric="cos", dtype="f32", connectivity=16, expansion_add=128, expansion_search=128
        )

    def _index(self, group_id: int) -> Index:
        """The group's index, loaded from its saved copy if current, else rebuilt from SQLite."""
        revision = self._revision(group_id)
        cached = self._indexes.get(group_id)
        if cached is not None and cached[1] == revision:
            return cached[0]
        index = self._new_index()
        saved = self._index_dir / f"{group_id}-{revision}.usearch"
        if saved.exists():
            index.load(str(saved))
        else:
            rows = self.db.execute(
                "SELECT id, embedding FROM memories WHERE group_id = ? AND search_text IS NOT NULL", (group_id,)
            ).fetchall()
            if rows:
                keys = np.fromiter((row["id"] for row in rows), dtype=np.uint64, count=len(rows))
                index.add(keys, self._vectors([row["embedding"] for row in rows]))
        self._indexes[group_id] = (index, revision)
        return index

    def _index_changed(
        self,
        group_id: int,
        revision: int,
        removed: Sequence[int] = (),
        added: Sequence[tuple[int, np.ndarray]] = (),
    ) -> None:
        """Keep a cached index in step with a committed change (revision - 1 -> revision)."""
        cached = self._indexes.get(group_id)
        if cached is None or cached[1] != revision - 1:
            self._indexes.pop(group_id, None)  # stale: rebuilt on next use
            return
        index = cached[0]
        for key in removed:
            index.remove(key)
        if added:
            index.add(np.array([key for key, _ in added], dtype=np.uint64), np.stack([vector for _, vector in added]))
        self._indexes[group_id] = (index, revision)

    def _save_index(self, group_id: int) -> None:
        cached = self._indexes.get(group_id)
        if cached is None:
            return
        index, revision = cached
        target = self._index_dir / f"{group_id}-{revision}.usearch"
        if not target.exists():
            partial = target.with_suffix(".partial")
            index.save(str(partial))
            partial.replace(target)
        for stale in self._index_dir.glob(f"{group_id}-*.usearch"):
            if stale != target:
                stale.unlink(missing_ok=True)


class PostgresMemoryStore(MemoryDatabase):
    """`MemoryStore` in a PostgreSQL database several servers share: pgvector for dense search, tsvector for lexical.

    Dense search is exact (every retrievable memory of the group, by cosine distance): groups hold at most
    `quotas.memories_per_group` memories, and an exact scan filtered by group never misses what an approximate
    index filtered after the fact would."""

    POSTGRES_MIGRATIONS = POSTGRES_MIGRATIONS
    VECTOR_PARAM = "CAST(? AS vector)"
    VECTOR_COLUMN = "CAST(embedding AS real[])"

    def _vector_value(self, vector: np.ndarray) -> list[float]:
        return np.asarray(vector, dtype=np.float32).tolist()

    def _vectors(self, values: Sequence[list[float]]) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).reshape(len(values), self._dimensions)

    def _dense(self, group_id: int, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        return [
            (row["id"], 1.0 - row["distance"])
            for row in self.db.execute(
                "SELECT id, embedding <=> CAST(:vector AS vector) AS distance FROM memories"
                " WHERE group_id = :group_id AND search_text IS NOT NULL ORDER BY distance, id LIMIT :k",
                {"vector": self._vector_value(vector), "group_id": group_id, "k": k},
            )
        ]

    def _lexical(self, group_id: int, query: str, k: int) -> list[tuple[int, float]]:
        # The FTS5 query (quoted words joined by OR) is web search syntax too, which never fails to parse.
        return [
            (row["id"], row["relevance"])
            for row in self.db.execute(
                "SELECT id, ts_rank(lexical, query) AS relevance FROM memories,"
                " websearch_to_tsquery('english', ?) AS query WHERE group_id = ? AND lexical @@ query"
                " ORDER BY relevance DESC, id LIMIT ?",
                (query, group_id, k),
            )
        ]


def memory_store(location: Location, dimensions: int) -> MemoryDatabase:
    """The store for a location: PostgreSQL for a postgresql:// URL (shared by servers), else a SQLite file."""
    if is_postgres(location):
        return PostgresMemoryStore(str(location), dimensions)
    return SQLiteMemoryStore(Path(location), dimensions)


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()
