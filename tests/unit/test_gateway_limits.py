"""The per-key sliding-window rate limiter (in memory, and in a shared database: SQLite and PostgreSQL) and the
credits check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.gateway.errors import InsufficientCredits, RateLimited, TooManyInFlight
from server.gateway.limits import (
    WINDOW_S,
    InFlightCaps,
    Limits,
    LocalSlots,
    RateLimiter,
    SharedRateLimiter,
    SharedSlots,
    check_credits,
    check_in_flight,
)
from server.supervision import stop
from tests.conftest import StoreLocation
from tests.postgres import new_database


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter | SharedRateLimiter]:
    """The limiter in memory, or in a database (a SQLite file, or a fresh database of the session's cluster)."""
    if request.param == "memory":
        yield RateLimiter()
        return
    tmp_path: Path = request.getfixturevalue("tmp_path")
    postgres = request.param == "postgresql"
    shared = SharedRateLimiter(new_database(request.getfixturevalue("postgres")) if postgres else tmp_path / "r.db")
    await shared.open()
    yield shared
    await shared.close()


async def spent(limiter: RateLimiter | SharedRateLimiter, key_id: str, tokens: int, now: float) -> None:
    """`spend` and, for the database's limiter, wait until its write (off the caller's path) is done."""
    limiter.spend(key_id, tokens, now)
    if isinstance(limiter, SharedRateLimiter):
        await limiter._run(lambda: None)  # the store's one thread runs in order: the write came first


async def test_requests_per_minute_admits_up_to_the_limit_then_says_when_one_more_fits(
    limiter: RateLimiter | SharedRateLimiter,
) -> None:
    limits = Limits(requests_per_minute=2)
    await limiter.admit("k", limits, now=100.0)
    await limiter.admit("k", limits, now=110.0)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("k", limits, now=120.0)
    assert refused.value.retry_after_s == pytest.approx(100.0 + WINDOW_S - 120.0)
    await limiter.admit("k", limits, now=100.0 + WINDOW_S + 0.01)  # the first request has left the window


async def test_refused_requests_do_not_count(limiter: RateLimiter | SharedRateLimiter) -> None:
    limits = Limits(requests_per_minute=1)
    await limiter.admit("k", limits, now=0.0)
    for now in (1.0, 2.0, 3.0):
        with pytest.raises(RateLimited):
            await limiter.admit("k", limits, now=now)
    await limiter.admit("k", limits, now=WINDOW_S + 0.5)


async def test_tokens_per_minute_counts_spent_tokens_and_retries_when_enough_leave(
    limiter: RateLimiter | SharedRateLimiter,
) -> None:
    limits = Limits(tokens_per_minute=100)
    await limiter.admit("k", limits, now=0.0)
    await spent(limiter, "k", 60, now=1.0)
    await limiter.admit("k", limits, now=2.0)
    await spent(limiter, "k", 50, now=3.0)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("k", limits, now=4.0)
    # 110 tokens in the window: once the 60 from t=1 leave, 50 < 100.
    assert refused.value.retry_after_s == pytest.approx(1.0 + WINDOW_S - 4.0)


async def test_keys_have_separate_windows_and_no_limits_means_no_window(
    limiter: RateLimiter | SharedRateLimiter,
) -> None:
    await limiter.admit("a", Limits(requests_per_minute=1), now=0.0)
    await limiter.admit("b", Limits(requests_per_minute=1), now=0.0)
    for _ in range(100):
        await limiter.admit("c", Limits(), now=0.0)


def test_credits() -> None:
    check_credits(None)
    check_credits(1)
    for exhausted in (0, -5):
        with pytest.raises(InsufficientCredits):
            check_credits(exhausted)


async def test_servers_sharing_the_database_share_one_window(store_location: StoreLocation) -> None:
    """Two limiters on one database (two servers), admitting at once: the limit holds across both."""
    location = store_location("ratelimits.sqlite3")
    first, second = SharedRateLimiter(location), SharedRateLimiter(location)
    await first.open()
    await second.open()
    try:
        limits = Limits(requests_per_minute=5)

        async def attempt(limiter: SharedRateLimiter) -> bool:
            try:
                await limiter.admit("k", limits, now=1000.0)
            except RateLimited:
                return False
            return True

        admitted = await asyncio.gather(*(attempt(limiter) for limiter in [first, second] * 8))
        assert sum(admitted) == 5
        with pytest.raises(RateLimited) as refused:
            await second.admit("k", limits, now=1030.0)
        assert refused.value.retry_after_s == pytest.approx(30.0)
        await first.admit("k", limits, now=1000.0 + WINDOW_S + 0.01)  # the window moved on, for both
    finally:
        await first.close()
        await second.close()


def test_in_flight_caps_refuse_the_request_past_either_cap() -> None:
    caps = InFlightCaps(requests=3, streams=2)
    check_in_flight(2, 1, stream=True, caps=caps)
    with pytest.raises(TooManyInFlight, match="3 concurrent requests"):
        check_in_flight(3, 0, stream=False, caps=caps)
    with pytest.raises(TooManyInFlight, match="2 concurrent streams") as refused:
        check_in_flight(2, 2, stream=True, caps=caps)
    assert refused.value.status == 429 and refused.value.headers() == {"Retry-After": "1"}
    check_in_flight(2, 2, stream=False, caps=caps)  # streams full, a plain request still fits


async def test_local_slots_count_per_key_and_give_back() -> None:
    slots, caps = LocalSlots(), InFlightCaps(requests=2, streams=1)
    held = [await slots.acquire("k", True, caps), await slots.acquire("other", True, caps)]
    with pytest.raises(TooManyInFlight, match="1 concurrent streams"):
        await slots.acquire("k", True, caps)
    held.append(await slots.acquire("k", False, caps))
    with pytest.raises(TooManyInFlight, match="2 concurrent requests"):
        await slots.acquire("k", False, caps)
    for slot in held:
        slots.release(slot)
    assert not slots.requests and not slots.streams


async def test_shared_slots_hold_one_cap_across_servers_and_a_dead_servers_slots_expire(
    store_location: StoreLocation,
) -> None:
    """Two servers' slots on one database: the cap is the key's, whichever server holds the slots; a server that
    stops renewing (it died) frees its slots when their leases run out; a live server's leases are renewed."""
    location = store_location("slots.sqlite3")
    now = [1000.0]
    first, second = SharedSlots(location, lease_s=10.0), SharedSlots(location, lease_s=10.0)
    for slots in (first, second):
        slots.clock = lambda: now[0]
        await slots.open()
    caps = InFlightCaps(requests=3, streams=2)
    try:
        await first.acquire("k", True, caps)
        on_second = await second.acquire("k", True, caps)
        with pytest.raises(TooManyInFlight, match="2 concurrent streams"):
            await first.acquire("k", True, caps)
        await second.acquire("other", True, caps)  # another key's caps are its own
        await first.acquire("k", False, caps)
        with pytest.raises(TooManyInFlight, match="3 concurrent requests"):
            await second.acquire("k", False, caps)
        second.release(on_second)
        await second._run(lambda: None)  # the release (off the caller's path) is written
        await first.acquire("k", True, caps)
        # the first server dies (stops renewing); the second renews its own: only the first's slots expire
        await stop(first._renewal)
        on_second = await second.acquire("other", False, caps)
        now[0] += 8.0
        await second.renew()
        now[0] += 4.0
        await second.acquire("k", True, caps)
        await second.acquire("k", True, caps)  # the dead server's three slots of `k` no longer count
        with pytest.raises(TooManyInFlight, match="2 concurrent streams"):
            await second.acquire("k", True, caps)
        await second.acquire("other", False, caps)
        with pytest.raises(TooManyInFlight, match="3 concurrent requests"):  # `other`'s renewed slots still count
            await second.acquire("other", False, caps)
    finally:
        for slots in (first, second):
            await slots.close()
    reopened = SharedSlots(location)  # closing gave back every slot of the server
    await reopened.open()
    try:
        for _ in range(3):
            await reopened.acquire("other", False, caps)
    finally:
        await reopened.close()
