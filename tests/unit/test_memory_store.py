"""The SQLite memory store on a real database file: CRUD, search, atomic curation, index as a rebuildable cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.memory.store import CurationChange, NewMemory, SQLiteMemoryStore

DIMENSIONS = 16


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIMENSIONS).astype(np.float32)
    return vector / np.linalg.norm(vector)


async def opened(path: Path) -> SQLiteMemoryStore:
    store = SQLiteMemoryStore(path, DIMENSIONS)
    await store.open()
    return store


async def test_add_search_update_delete(tmp_path: Path) -> None:
    store = await opened(tmp_path / "m.sqlite3")
    group = await store.ensure_group("owner", "g", "goal")
    added = await store.add(group, [NewMemory(f"memory number {i}", "note", unit(i)) for i in range(20)])
    dense, lexical = await store.search(group, unit(7), '"number"', 3)
    assert dense[0] == (added[7].id, pytest.approx(1.0, abs=1e-5))
    assert len(lexical) == 3 and all(score > 0 for _, score in lexical)

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


async def test_curation_apply_skips_changes_made_stale(tmp_path: Path) -> None:
    store = await opened(tmp_path / "m.sqlite3")
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


async def test_a_failure_mid_curation_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await opened(tmp_path / "m.sqlite3")
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
