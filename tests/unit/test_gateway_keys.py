"""The key store on SQLite and PostgreSQL (hashed keys, owners matching static-key fingerprints, revocation, debits); model references and the fallback loop."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing

import psycopg
import pytest

from server.api.middleware import key_fingerprint
from server.engine.errors import EngineUnavailable
from server.gateway.errors import KeyNotFound, ModelUnavailable, UpstreamFailed
from server.gateway.keys import KeySpec, KeyStore, has_active_keys
from server.gateway.routing import candidates, first_that_serves, parse_model_ref
from server.storage import Location, is_postgres
from tests.conftest import StoreLocation
from tests.postgres import new_database


def stored_hash(location: Location) -> str:
    """The one key's stored hash, read straight from the database."""
    connect = psycopg.connect if is_postgres(location) else sqlite3.connect
    with closing(connect(location)) as db:  # type: ignore[operator]
        return db.execute("SELECT hash FROM api_keys").fetchone()[0]


async def test_keys_are_stored_hashed_and_authenticate_until_revoked(store_location: StoreLocation) -> None:
    path = store_location("keys.sqlite3")
    assert not has_active_keys(path)
    store = KeyStore(path)
    await store.open()
    try:
        assert not await store.any_active() and not has_active_keys(path)
        key, secret = await store.create(KeySpec(name="team", credits=100, allowed_models=("m",)))
        stored = stored_hash(path)
        assert secret not in stored and stored == hashlib.sha256(secret.encode()).hexdigest()
        assert key.owner == key_fingerprint(secret.encode())  # same owner id a static key would get
        found = await store.authenticate(secret)
        assert found is not None and found.allowed_models == ("m",) and found.credits == 100
        assert await store.authenticate(secret + "x") is None
        store.debit(key.id, 30)
        assert (await store.get(key.id)).credits == 70
        assert has_active_keys(path)
        await store.revoke(key.id)
        assert await store.authenticate(secret) is None
        assert not await store.any_active()
        with pytest.raises(KeyNotFound):
            await store.revoke("key-missing")
    finally:
        await store.close()


def test_model_references() -> None:
    assert parse_model_ref("smollm2@upstream") == ("smollm2", "upstream")
    assert parse_model_ref("org/model@p") == ("org/model", "p")
    assert parse_model_ref("plain") == ("plain", None)
    assert parse_model_ref("@p") == ("@p", None)
    assert candidates("a", ["b", "a", "c"]) == ["a", "b", "c"]
    assert candidates("a", None) == ["a"]


async def test_fallback_goes_on_only_after_failures_another_model_might_not_have() -> None:
    tried: list[str] = []

    def attempt_failing_with(failures: dict[str, Exception]):
        async def attempt(name: str) -> str:
            tried.append(name)
            if name in failures:
                raise failures[name]
            return name

        return attempt

    retryable = {
        "busy": UpstreamFailed("p", 429, "rate limited"),
        "broken": UpstreamFailed("p", 500, "server error"),
        "slow": UpstreamFailed("p", 504, "timed out"),
        "unknown": ModelUnavailable("unknown"),
        "dead-engine": EngineUnavailable("down"),
    }
    assert await first_that_serves([*retryable, "good"], attempt_failing_with(retryable)) == "good"
    assert tried == [*retryable, "good"]
    tried.clear()
    refused = UpstreamFailed("p", 400, "bad request")
    with pytest.raises(UpstreamFailed) as raised:
        await first_that_serves(["bad", "good"], attempt_failing_with({"bad": refused}))
    assert raised.value is refused and tried == ["bad"]  # a bad request is bad everywhere
    with pytest.raises(ModelUnavailable):
        await first_that_serves(["busy", "unknown"], attempt_failing_with(retryable))  # the last failure


async def test_a_store_reconnects_after_postgres_drops_its_connection(postgres: str) -> None:
    url = new_database(postgres)
    store = KeyStore(url)
    await store.open()
    try:
        key, secret = await store.create(KeySpec(name="survivor"))
        with closing(psycopg.connect(url, autocommit=True)) as admin:  # as a database restart would
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(psycopg.OperationalError):
            await store.authenticate(secret)  # the call that finds the connection lost fails
        found = await store.authenticate(secret)
        assert found is not None and found.id == key.id
    finally:
        await store.close()
