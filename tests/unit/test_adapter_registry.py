"""The adapter registry in the shared database (server/engine/registry.py), on real SQLite and real PostgreSQL: two
registries on one database (two servers) claim distinct version numbers, agree on owners, quotas, the active
version and deletions, and adapters on disk from before are imported once with their owner files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.engine.adapters import AdapterNotFound, AdapterOwned, AdapterQuotaExceeded, Ownership
from server.engine.registry import AdapterRegistry
from tests.conftest import StoreLocation

MODEL = "smollm2"
NO_QUOTA = {"max_versions": None, "max_adapters": None}


@pytest.fixture
async def two(store_location: StoreLocation) -> AsyncIterator[tuple[AdapterRegistry, AdapterRegistry]]:
    """Two servers' registries on one database."""
    location = store_location("adapters.sqlite3")
    first, second = AdapterRegistry(location), AdapterRegistry(location)
    for registry in (first, second):
        await registry.open()
    yield first, second
    for registry in (first, second):
        await registry.close()


async def test_versions_claimed_on_two_servers_at_once_get_distinct_numbers_and_one_owner(
    two: tuple[AdapterRegistry, AdapterRegistry],
) -> None:
    first, second = two
    claims = await asyncio.gather(
        *(
            registry.claim(MODEL, "shared", {"source": f"s{i}"}, owner="key-a", admin=False, shared=False, **NO_QUOTA)
            for i, registry in enumerate([first, second] * 3)
        )
    )
    assert sorted(claim.version for claim in claims) == [1, 2, 3, 4, 5, 6]
    assert [claim.created for claim in claims].count(True) == 1
    generation, models = await second.load()
    adapter = models[MODEL]["shared"]
    assert adapter.ownership == Ownership(owner="key-a", shared=False)
    assert sorted(adapter.versions) == [1, 2, 3, 4, 5, 6] and adapter.active is None
    assert all(manifest["version"] == number for number, manifest in adapter.versions.items())
    await first.activate(MODEL, "shared", 4)
    assert await second.generation() > generation
    assert (await second.load())[1][MODEL]["shared"].active == 4
    with pytest.raises(AdapterOwned):  # another key, on either server
        await second.claim(MODEL, "shared", {}, owner="key-b", admin=False, shared=False, **NO_QUOTA)
    assert (await first.claim(MODEL, "shared", {}, owner="key-b", admin=True, shared=False, **NO_QUOTA)).version == 7


async def test_quotas_hold_across_servers(two: tuple[AdapterRegistry, AdapterRegistry]) -> None:
    first, second = two
    quota = {"max_versions": 2, "max_adapters": 1}
    await first.claim(MODEL, "mine", {}, owner="key-a", admin=False, shared=False, **quota)
    await second.claim(MODEL, "mine", {}, owner="key-a", admin=False, shared=False, **quota)
    with pytest.raises(AdapterQuotaExceeded, match="2 versions"):
        await first.claim(MODEL, "mine", {}, owner="key-a", admin=False, shared=False, **quota)
    with pytest.raises(AdapterQuotaExceeded, match="owns 1 adapters"):
        await second.claim(MODEL, "another", {}, owner="key-a", admin=False, shared=False, **quota)
    assert "another" not in (await first.load())[1][MODEL]  # the refused claim left nothing behind


async def test_a_failed_claim_is_given_back_and_a_removal_moves_the_folder_with_the_rows(
    two: tuple[AdapterRegistry, AdapterRegistry], tmp_path: Path
) -> None:
    first, second = two
    made = await first.claim(MODEL, "gone", {}, owner="key-a", admin=False, shared=False, **NO_QUOTA)
    await first.forget(MODEL, "gone", made)
    assert MODEL not in (await second.load())[1]
    await first.claim(MODEL, "gone", {}, owner="key-a", admin=False, shared=False, **NO_QUOTA)
    folder = tmp_path / "adapters" / "gone"
    (folder / "v1").mkdir(parents=True)
    with pytest.raises(AdapterNotFound):  # a key that may not use it is told it does not exist
        await second.remove(MODEL, "gone", folder, owner="key-b", admin=False)
    await first.activate(MODEL, "gone", 1)
    removed = await second.remove(MODEL, "gone", folder, owner="key-a", admin=False)
    assert removed is not None and removed.is_dir() and not folder.exists() and removed.parent == folder.parent
    assert "gone" not in (await first.load())[1].get(MODEL, {})
    with pytest.raises(AdapterNotFound):
        await first.remove(MODEL, "gone", folder, owner="key-a", admin=False)


async def test_adapters_on_disk_are_imported_once_with_their_owner_and_active_pointer(
    two: tuple[AdapterRegistry, AdapterRegistry], tmp_path: Path
) -> None:
    first, second = two
    root = tmp_path / "adapters"
    for name, versions in {"operator": [1, 2], "private": [1, 2, 3], "empty": []}.items():
        (root / name).mkdir(parents=True)
        for number in versions:
            (root / name / f"v{number}").mkdir()
            (root / name / f"v{number}" / "manifest.json").write_text(json.dumps({"source": f"{name}-{number}"}))
    (root / "private" / "owner.json").write_text(json.dumps({"owner": "key-a", "shared": False}))
    (root / "private" / "active").write_text("v2\n")
    (root / ".removed-old-1234").mkdir()
    assert await first.import_directories(MODEL, root) == ["operator", "private"]
    assert await second.import_directories(MODEL, root) == []  # the second server finds them registered
    registered = (await second.load())[1][MODEL]
    assert registered["operator"].ownership == Ownership(owner=None, shared=True) and registered["operator"].active == 2
    assert registered["private"].ownership == Ownership(owner="key-a", shared=False)
    assert registered["private"].active == 2
    assert registered["private"].versions[3] == {"source": "private-3"}
    assert (await first.claim(MODEL, "private", {}, owner="key-a", admin=False, shared=False, **NO_QUOTA)).version == 4
