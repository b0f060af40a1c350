"""Credit reservation in the key store, on SQLite and PostgreSQL: one conditional UPDATE, never overdrawn."""

from __future__ import annotations

import asyncio

from server.gateway.keys import KeySpec, KeyStore
from tests.conftest import StoreLocation


async def test_concurrent_reservations_never_overdraw_and_settle_refunds(store_location: StoreLocation) -> None:
    store = KeyStore(store_location("keys.sqlite3"))
    await store.open()
    try:
        key, _ = await store.create(KeySpec(name="k", credits=200))
        outcomes = await asyncio.gather(*(store.reserve(key.id, 60) for _ in range(10)))
        assert outcomes.count(None) == 3  # 3 x 60 fit in 200
        assert sorted(set(outcomes) - {None}) == [20]  # the others saw what was left
        assert (await store.get(key.id)).credits == 20
        store.settle_reservation(key.id, 60, 45)  # used less: the rest back
        store.settle_reservation(key.id, 60, 90)  # used more than held: taken, never below zero
        assert (await store.get(key.id)).credits == 5
        store.settle_reservation(key.id, 0, 500)
        assert (await store.get(key.id)).credits == 0
    finally:
        await store.close()
