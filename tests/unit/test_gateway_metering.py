"""Metered work (moderations, memory, fine-tuning): atomic charges that never take a balance below zero; adapter
authorization (allowed_adapters and ownership)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from server.engine.adapters import OPERATOR_OWNED, Ownership
from server.gateway.errors import AdapterHidden, AdapterNotOwned, InsufficientCredits, NotAllowed
from server.gateway.keys import KeySpec, KeyStore, Principal
from server.gateway.service import Gateway, authorize_adapter
from tests.conftest import StoreLocation


async def test_concurrent_charges_never_overdraw(store_location: StoreLocation) -> None:
    store = KeyStore(store_location("keys.sqlite3"))
    await store.open()
    try:
        key, _ = await store.create(KeySpec(name="tenant", credits=200))
        unlimited, _ = await store.create(KeySpec(name="unlimited"))
        gateway = Gateway(SimpleNamespace(), store, None, None, None)  # type: ignore[arg-type]
        principal = Principal(owner=key.owner, admin=False, key=key)
        outcomes = await asyncio.gather(
            *(gateway.charge(principal, 60, "a moderation") for _ in range(10)), return_exceptions=True
        )
        taken = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
        refused = [outcome for outcome in outcomes if isinstance(outcome, InsufficientCredits)]
        assert len(taken) == 3 and len(refused) == 7
        assert (await store.get(key.id)).credits == 20
        await gateway.refund(taken[0])
        assert (await store.get(key.id)).credits == 80
        assert (await gateway.charge(principal, 0.2, "x")).credits == 1  # fractions round up
        assert (await gateway.charge(principal, 0, "free work")).credits == 0
        free = await gateway.charge(Principal(owner=unlimited.owner, admin=False, key=unlimited), 10**9, "x")
        assert free.credits == 0 and (await store.get(unlimited.id)).credits is None
        assert (await store.add_credits(key.id, 1000)).credits == 1079
        assert (await store.add_credits(unlimited.id, 5)).credits == 5
    finally:
        await store.close()


def test_authorize_adapter_by_allowed_list_and_ownership() -> None:
    mine = Ownership(owner="key_a", shared=False)
    shared = Ownership(owner="key_b", shared=True)
    private = Ownership(owner="key_b", shared=False)
    tenant = Principal(owner="key_a", admin=False)
    admin = Principal(owner="key_admin", admin=True)
    authorize_adapter(tenant, "x", mine, change=True)
    authorize_adapter(tenant, "x", shared)
    authorize_adapter(tenant, "x", OPERATOR_OWNED)
    authorize_adapter(tenant, "new", None, change=True)
    authorize_adapter(admin, "x", private, change=True)
    with pytest.raises(AdapterNotOwned):
        authorize_adapter(tenant, "x", shared, change=True)
    with pytest.raises(AdapterNotOwned):
        authorize_adapter(tenant, "x", OPERATOR_OWNED, change=True)
    with pytest.raises(AdapterHidden):
        authorize_adapter(tenant, "x", private)
    key = SimpleNamespace(allowed_adapters=("x",))
    limited = Principal(owner="key_a", admin=False, key=key)  # type: ignore[arg-type]
    authorize_adapter(limited, "x", mine)
    with pytest.raises(NotAllowed):
        authorize_adapter(limited, "y", mine, param="suffix")
