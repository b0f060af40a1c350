"""Queued store writes: a failed write is kept, logged and retried, never dropped; the outbox keeps what close could
not write. Failures are injected into real stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.gateway.keys import KeySpec, KeyStore
from server.gateway.pending import PendingWrites, WriteFailed, read_outbox, retry_delay, spill
from server.gateway.usage import UsageQuery, UsageStore
from tests.conftest import StoreLocation
from tests.unit.test_gateway_usage import record


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n, 0.5, 3.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_failed_batch_stays_queued_in_order_and_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    written: list[int] = []
    failures = [OSError(28, "No space left on device")] * 2  # injected: the first two writes fail

    def write(batch: list[int]) -> None:
        if failures:
            raise failures.pop()
        written.extend(batch)

    with ThreadPoolExecutor(1) as executor, caplog.at_level(logging.ERROR, logger="server.gateway.pending"):
        pending = PendingWrites("test", executor, write, first_backoff_s=0.01)
        for item in range(5):
            pending.add(item)
        deadline = time.monotonic() + 5
        while written != [0, 1, 2, 3, 4] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert written == [0, 1, 2, 3, 4]
        assert pending.failed_writes == 2 and pending.failures_in_a_row == 0 and len(pending) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("writing" in m and "No space left on device" in m and "kept, retrying" in m for m in messages) == 2


def test_spill_and_read_outbox_round_trip_and_skip_a_torn_line(tmp_path: Path) -> None:
    outbox = tmp_path / "usage.outbox.jsonl"
    spill(outbox, [{"a": 1}, {"a": 2}], "test")
    with outbox.open("a") as handle:
        handle.write('{"a": 3')  # a crash while spilling
    assert read_outbox(outbox) == [{"a": 1}, {"a": 2}]
    assert read_outbox(tmp_path / "missing.jsonl") == []


def test_spill_without_an_outbox_logs_every_row(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="server.gateway.pending"):
        spill(None, [{"request_id": "r-lost"}], "usage store")
    assert any("unwritten record" in r.getMessage() and "r-lost" in r.getMessage() for r in caplog.records)


async def test_usage_writes_survive_a_failing_database(store_location: StoreLocation) -> None:
    store = UsageStore(store_location("usage.sqlite3"))
    await store.open()
    try:
        store.pending._first_backoff_s = 0.05
        real_insert = store._insert
        disk_full = True

        def failing_insert(batch):  # failure injection: writes fail until the disk has room again
            if disk_full:
                raise sqlite3.OperationalError("database or disk is full")
            real_insert(batch)

        store.pending._write = failing_insert
        store.record(record("r1", "o", 1.0))
        store.record(record("r2", "o", 2.0))
        with pytest.raises(WriteFailed):
            await store.written()  # a caller waiting for durability hears of the failure
        assert len(store.pending) == 2  # kept, not dropped
        disk_full = False
        for _ in range(100):
            if not len(store.pending):
                break
            await asyncio.sleep(0.05)
        await store.written()
        assert (await store.aggregate(UsageQuery((), 0.0, 10.0, owner=None)))[0]["requests"] == 2
    finally:
        await store.close()


async def test_usage_unwritten_at_close_is_replayed_from_the_outbox(tmp_path: Path) -> None:
    path, outbox = tmp_path / "usage.sqlite3", tmp_path / "usage.outbox.jsonl"
    store = UsageStore(path, outbox=outbox)
    await store.open()

    def broken(batch):  # failure injection: the database refuses every write until shutdown
        raise sqlite3.OperationalError("disk I/O error")

    store.pending._write = broken
    store.pending._first_backoff_s = 60
    store.record(record("r-outbox", "o", 5.0))
    await store.close()
    assert [row["request_id"] for row in read_outbox(outbox)] == ["r-outbox"]

    reopened = UsageStore(path, outbox=outbox)
    await reopened.open()
    try:
        assert [r.request_id for r in await reopened.find("r-outbox", owner=None)] == ["r-outbox"]
        assert not outbox.exists()
    finally:
        await reopened.close()


async def test_debits_are_retried_and_survive_close_through_the_outbox(store_location: StoreLocation, tmp_path) -> None:
    location = store_location("keys.sqlite3")
    outbox = tmp_path / "debits.outbox.jsonl"
    store = KeyStore(location, outbox=outbox)
    await store.open()
    key, _ = await store.create(KeySpec(name="paying", credits=1000))
    real = store._debit
    store.pending_failures = [sqlite3.OperationalError("database is locked")]

    def failing(batch):  # failure injection: one failed write, then the database works again
        if store.pending_failures:
            raise store.pending_failures.pop()
        real(batch)

    store.debits._write = failing
    store.debits._first_backoff_s = 0.05
    store.debit(key.id, 30)
    store.debit(key.id, 12)
    for _ in range(100):
        if (await store.get(key.id)).credits == 958:
            break
        await asyncio.sleep(0.05)
    assert (await store.get(key.id)).credits == 958

    def broken(batch):
        raise sqlite3.OperationalError("disk I/O error")

    store.debits._write = broken
    store.debits._first_backoff_s = 60
    store.debit(key.id, 8)
    await store.close()
    assert read_outbox(outbox) == [{"key_id": key.id, "tokens": 8}]
    reopened = KeyStore(location, outbox=outbox)
    await reopened.open()
    try:
        assert (await reopened.get(key.id)).credits == 950
    finally:
        await reopened.close()
