"""The memory store on a real SQLite file and on real PostgreSQL (pgvector): CRUD, search, atomic curation, the
SQLite index as a rebuildable cache, the two engines' searches agreeing, two stores sharing one PostgreSQL database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.memory.store import (
    EXACT_SEARCH_MAX,
    CurationChange,
    MemoryDatabase,
    NewMemory,
    PostgresMemoryStore,
    memory_store,
)
from server.storage import Location
from tests.conftest import StoreLocation
from tests.postgres import new_database

DIMENSIONS = 16


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIMENSIONS).astype(np.float32)
    return vector / np.linalg.norm(vector)


async def opened(location: Location) -> MemoryDatabase:
    store = memory_store(location, DIMENSIONS)
    await store.open()
    return store


async def test_add_search_update_delete(store_location: StoreLocation) -> None:
    store = await opened(store_location("m.sqlite3"))
    group = await store.ensure_group("owner", "g", "goal")
    added = await store.add(group, [NewMemory(f"memory number {i}", "note", unit(i)) for i in range(20)])
    dense, lexical = await store.search(group, unit(7), '"number"', 3)
    assert dense[0] == (added[7].id, pytest.approx(1.0, abs=1e-5))
    assert len(lexical) == 3 and all(score > 0 for _, score in lexical)
    # the halves the service runs side by side answer what `search` answers
    assert await store.dense_search(group, unit(7), 3) == dense
    assert await store.lexical_search(group, '"number"', 3) == lexical
    assert await store.lexical_search(group, "", 3) == []
    # the service's one call: rows with embeddings for the dense hits and the lexical hits
    also = [memory_id for memory_id, _ in lexical] + [added[0].id, 10**9]  # an unknown id is left out
    rows = await store.candidates(group, unit(7), 3, also)
    assert set(rows) == {memory_id for memory_id, _ in dense} | set(also[:-1])
    memory, embedding = rows[added[7].id]
    assert memory == (await store.fetch(group, [added[7].id]))[added[7].id]
    assert embedding.dtype == np.float32 and np.allclose(embedding, unit(7), atol=1e-6)

    updated = await store.update(group, added[7].id, "changed text", unit(99))
    assert updated is not None and updated.text == "changed text"
    dense, _ = await store.search(group, unit(99), "", 1)
    assert dense[0][0] == added[7].id
    assert await store.delete(group, added[7].id)
    assert not await store.delete(group, added[7].id)
    dense, _ = await store.search(group, unit(99), "", 5)
    assert added[7].id not in [memory_id for memory_id, _ in dense]

    other = await store.ensure_group("someone-else", "g", "goal")
    assert other.id != group.id and (await store.get_group("owner", "g")).memory_count == 19
    assert await store.list_memories(other, 10, None) == []
    await store.close()


async def test_curation_apply_skips_changes_made_stale(store_location: StoreLocation) -> None:
    store = await opened(store_location("m.sqlite3"))
    group = await store.ensure_group("owner", "g", "goal")
    first, second, _ = await store.add(group, [NewMemory(f"m{i}", "note", unit(i)) for i in range(3)])
    await store.update(group, second.id, "edited after the snapshot", unit(5))
    applied = await store.apply(
        group,
        "run1",
        [
            CurationChange("merge_duplicates", (first,), (), "dup"),
            CurationChange("merge_duplicates", (second,), (), "stale: edited meanwhile"),
        ],
    )
    assert [change.reason for change in applied] == ["dup"]
    remaining = [memory.text for memory in await store.list_memories(group, 10, None)]
    assert remaining == ["edited after the snapshot", "m2"]
    [entry] = await store.audit(group, 10)
    assert entry.run_id == "run1" and entry.removed[0]["text"] == "m0"
    await store.close()


async def test_a_failure_mid_curation_loses_nothing(
    store_location: StoreLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened(store_location("m.sqlite3"))
    group = await store.ensure_group("owner", "g", "goal")
    memories = await store.add(group, [NewMemory(f"m{i}", "fact", unit(i)) for i in range(4)])
    calls = 0
    original_insert = store._insert

    def crash_on_second_insert(group_id, items):  # failure injection: dies halfway through the plan
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("disk gone")
        return original_insert(group_id, items)

    monkeypatch.setattr(store, "_insert", crash_on_second_insert)
    changes = [
        CurationChange("consolidate", tuple(memories[:2]), (NewMemory("merged", "consolidated", unit(10)),), "r"),
        CurationChange("consolidate", tuple(memories[2:]), (NewMemory("merged 2", "consolidated", unit(11)),), "r"),
    ]
    with pytest.raises(RuntimeError):
        await store.apply(group, "run", changes)
    assert [memory.text for memory in await store.list_memories(group, 10, None)] == ["m0", "m1", "m2", "m3"]
    assert await store.audit(group, 10) == []
    dense, _ = await store.search(group, unit(0), "", 1)
    assert dense[0][0] == memories[0].id
    await store.close()


async def test_index_is_rebuilt_when_its_saved_copy_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    store = await opened(path)
    group = await store.ensure_group("owner", "g", "goal")
    await store.add(group, [NewMemory("kept", "note", unit(1))])
    await store.search(group, unit(1), "", 1)
    await store.close()  # saves the index at this revision
    assert list(path.with_name(path.name + ".indexes").glob("*.usearch"))

    crashed = await opened(path)
    [late] = await crashed.add(group, [NewMemory("added before a crash", "note", unit(2))])
    # no close(): the process died, its index never saved

    reopened = await opened(path)
    dense, _ = await reopened.search(group, unit(2), "", 1)
    assert dense[0][0] == late.id
    await reopened.close()


async def test_a_small_groups_nearest_neighbours_are_exact(tmp_path: Path) -> None:
    store = await opened(tmp_path / "m.sqlite3")
    group = await store.ensure_group("owner", "g", "goal")
    vectors = [unit(i) for i in range(EXACT_SEARCH_MAX)]
    await store.add(group, [NewMemory(f"m{i}", "note", vector) for i, vector in enumerate(vectors)])
    matrix = np.stack(vectors)
    for seed in range(5000, 5020):
        query = unit(seed)
        dense, _ = await store.search(group, query, "", 10)
        exact = np.argsort(-(matrix @ query), kind="stable")[:10] + 1  # ids count from 1
        assert [hit for hit, _ in dense] == exact.tolist()
    await store.close()


async def test_postgres_search_finds_what_sqlite_finds(tmp_path: Path, postgres: str) -> None:
    """The same memories in both engines: the same nearest neighbours with the same similarities, and the same
    memories matched by words (relevance is BM25 in SQLite, ts_rank in PostgreSQL: only the set is compared)."""
    stores = [await opened(tmp_path / "m.sqlite3"), await opened(new_database(postgres))]
    words = ["apple", "river", "violin", "garden", "winter", "copper", "lantern", "meadow"]
    texts = [f"the {words[i % 8]} and the {words[(i * 3 + 1) % 8]} number {i}" for i in range(200)]
    try:
        groups = [await store.ensure_group("owner", "g", "goal") for store in stores]
        for store, group in zip(stores, groups, strict=True):
            await store.add(group, [NewMemory(text, "note", unit(i)) for i, text in enumerate(texts)])
        for seed in (3, 77, 1000):
            query = unit(seed)
            sqlite_hits, postgres_hits = [
                await store.search(group, query, '"violin" OR "meadow"', 10)
                for store, group in zip(stores, groups, strict=True)
            ]
            assert [hit for hit, _ in sqlite_hits[0]] == [hit for hit, _ in postgres_hits[0]]
            assert [score for _, score in sqlite_hits[0]] == pytest.approx([s for _, s in postgres_hits[0]], abs=1e-4)
            matched = {
                i for i, text in enumerate(texts, start=1) if "violin" in text or "meadow" in text
            }  # ids count from 1 in both
            assert {hit for hit, _ in sqlite_hits[1]} <= matched and {hit for hit, _ in postgres_hits[1]} <= matched
            assert len(sqlite_hits[1]) == len(postgres_hits[1]) == 10
        # user text that is no valid query syntax matches nothing and fails nothing
        for store, group in zip(stores, groups, strict=True):
            assert (await store.search(group, unit(1), '"it\'s" OR "(" OR "\\"', 5))[1] == []
    finally:
        for store in stores:
            await store.close()


async def test_two_postgres_stores_share_one_database(postgres: str) -> None:
    """Two servers' stores on one database: a memory one writes, the other finds, counts, updates and deletes."""
    url = new_database(postgres)
    first, second = await opened(url), await opened(url)
    try:
        group = await first.ensure_group("owner", "g", "goal")
        [told] = await first.add(group, [NewMemory("my cat is called Pixel", "fact", unit(5))])
        seen = await second.get_group("owner", "g")
        assert seen is not None and seen.id == group.id and seen.memory_count == 1
        dense, lexical = await second.search(seen, unit(5), '"pixel"', 3)
        assert dense[0] == (told.id, pytest.approx(1.0, abs=1e-5)) and [hit for hit, _ in lexical] == [told.id]
        assert await second.update(seen, told.id, "my cat is called Pepper", unit(6)) is not None
        assert (await first.search(group, unit(6), '"pepper"', 1))[1][0][0] == told.id
        assert await second.delete(seen, told.id)
        assert await first.list_memories(group, 10, None) == []
        assert (await first.get_group("owner", "g")).memory_count == 0
        # the nightly schedule on both servers: one curates the group
        assert [await store.claim_curation(group, 600.0) for store in (first, second)] == [True, False]
        assert isinstance(first, PostgresMemoryStore)
    finally:
        await first.close()
        await second.close()
