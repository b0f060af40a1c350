"""Per-key rate limits (requests and tokens per minute) and the credits check.

Sliding window over the last 60 s. `RateLimiter` keeps the windows in this
process's memory (a restart forgets them, which at worst lets one extra
minute's worth through); `SharedRateLimiter` keeps them in the shared database
(`database_url`), so servers behind one load balancer enforce one limit. The
decision is one pure function of the window, the limits and the clock, which
callers pass in.

Requests and streams in flight per key, likewise: `LocalSlots` counts them in
memory, `SharedSlots` in the shared database, each slot a lease its server
renews while the request runs, so a server that dies leaks its slots only
until their leases run out.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import ClassVar

from server.gateway.errors import InsufficientCredits, RateLimited, TooManyInFlight
from server.storage import Database, Location
from server.supervision import start_supervised, stop

logger = logging.getLogger(__name__)

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass(slots=True)
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_total: int = 0

    def expire(self, now: float) -> None:
        cutoff = now - WINDOW_S
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= cutoff:
            self.token_total -= self.tokens.popleft()[1]


def check_window(window: _Window, limits: Limits, now: float) -> None:
    """Raise RateLimited, with the seconds until one more request would fit, when the window is full."""
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    if rpm is not None and len(window.requests) >= rpm:
        # The oldest request that must leave the window before one more fits.
        oldest = window.requests[len(window.requests) - rpm]
        raise RateLimited(f"{rpm} requests per minute", oldest + WINDOW_S - now)
    if tpm is not None and window.token_total >= tpm:
        raise RateLimited(f"{tpm} tokens per minute", _tokens_free_at(window, tpm) - now)


class RateLimiter:
    """`admit` before a request (counts it), `spend` after it with the tokens it used; windows in memory."""

    clock: ClassVar[Callable[[], float]] = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    async def admit(self, key_id: str, limits: Limits, now: float) -> None:
        """Count one request, or raise RateLimited with the seconds until it would fit."""
        if not limits.limited:
            return
        window = self._windows.setdefault(key_id, _Window())
        window.expire(now)
        check_window(window, limits, now)
        window.requests.append(now)

    def spend(self, key_id: str, tokens: int, now: float) -> None:
        window = self._windows.get(key_id)
        if window is None or tokens <= 0:
            return
        window.tokens.append((now, tokens))
        window.token_total += tokens


MIGRATIONS = (
    """
    CREATE TABLE rate_limit_keys (key_id TEXT PRIMARY KEY);
    CREATE TABLE rate_limit_events (
        key_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        requests INTEGER NOT NULL,
        tokens BIGINT NOT NULL
    );
    CREATE INDEX rate_limit_events_by_key ON rate_limit_events (key_id, at);
    """,
)


class SharedRateLimiter(Database):
    """`RateLimiter` with the windows in the shared database: each admission reads the key's window and counts
    itself in one transaction that holds the key's row, so servers admitting at once never both take the last
    place. Times are wall-clock (every server's clock, not one process's)."""

    MIGRATIONS = MIGRATIONS
    SCHEMA = "rate_limits"
    clock: ClassVar[Callable[[], float]] = staticmethod(time.time)

    def __init__(self, location: Location) -> None:
        super().__init__(location, "rate-limits")

    async def admit(self, key_id: str, limits: Limits, now: float) -> None:
        if limits.limited:
            await self._run(self._admit, key_id, limits, now)

    def _admit(self, key_id: str, limits: Limits, now: float) -> None:
        with self.db.transaction():
            # Takes the key's row lock in PostgreSQL (SQLite's write lock is already held): one admission at a time.
            self.db.execute(
                "INSERT INTO rate_limit_keys (key_id) VALUES (?)"
                " ON CONFLICT (key_id) DO UPDATE SET key_id = excluded.key_id",
                (key_id,),
            )
            self.db.execute("DELETE FROM rate_limit_events WHERE key_id = ? AND at <= ?", (key_id, now - WINDOW_S))
            window = _Window()
            for row in self.db.execute(
                "SELECT at, requests, tokens FROM rate_limit_events WHERE key_id = ? ORDER BY at", (key_id,)
            ):
                if row["requests"]:
                    window.requests.append(row["at"])
                if row["tokens"]:
                    window.tokens.append((row["at"], row["tokens"]))
                    window.token_total += row["tokens"]
            check_window(window, limits, now)
            self.db.execute(
                "INSERT INTO rate_limit_events (key_id, at, requests, tokens) VALUES (?, ?, 1, 0)", (key_id, now)
            )

    def spend(self, key_id: str, tokens: int, now: float) -> None:
        """Count tokens, off the caller's path (a failed write is logged: the window undercounts until it passes)."""
        if tokens <= 0:
            return
        written: Future[object] = self._thread.submit(
            lambda: self.db.execute(
                "INSERT INTO rate_limit_events (key_id, at, requests, tokens) VALUES (?, ?, 0, ?)",
                (key_id, now, tokens),
            )
        )
        written.add_done_callback(_log_failure)


def _log_failure(written: Future[object]) -> None:
    if not written.cancelled() and written.exception() is not None:
        logger.error("rate limit: tokens spent could not be counted", exc_info=written.exception())


def _tokens_free_at(window: _Window, tpm: int) -> float:
    """When enough old tokens have left the window to bring the total under `tpm`."""
    total = window.token_total
    for at, tokens in window.tokens:
        total -= tokens
        if total < tpm:
            return at + WINDOW_S
    return window.tokens[-1][0] + WINDOW_S


@dataclass(frozen=True, slots=True)
class InFlightCaps:
    requests: int  # requests one key may have in flight
    streams: int  # of which streamed responses


def check_in_flight(requests: int, streams: int, stream: bool, caps: InFlightCaps) -> None:
    """TooManyInFlight when one more request (a stream, with `stream`) would pass the key's caps."""
    if requests >= caps.requests:
        raise TooManyInFlight(f"{caps.requests} concurrent requests")
    if stream and streams >= caps.streams:
        raise TooManyInFlight(f"{caps.streams} concurrent streams")


@dataclass(frozen=True, slots=True)
class Slot:
    """One request's place in its key's count (`release` it when the request ends)."""

    key_id: str
    stream: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


class LocalSlots:
    """Requests and streams in flight per key, in this process's memory."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.streams: Counter[str] = Counter()

    async def acquire(self, key_id: str, stream: bool, caps: InFlightCaps) -> Slot:
        check_in_flight(self.requests[key_id], self.streams[key_id], stream, caps)
        self.requests[key_id] += 1
        if stream:
            self.streams[key_id] += 1
        return Slot(key_id, stream)

    def release(self, slot: Slot) -> None:
        for counter in (self.requests, *((self.streams,) if slot.stream else ())):
            counter[slot.key_id] -= 1
            if counter[slot.key_id] <= 0:
                del counter[slot.key_id]


SLOT_LEASE_S = 15.0  # a slot whose server stopped renewing it counts no longer than this

SLOT_MIGRATIONS = (
    """
    CREATE TABLE in_flight_keys (key_id TEXT PRIMARY KEY);
    CREATE TABLE in_flight_slots (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        stream INTEGER NOT NULL,
        server TEXT NOT NULL,
        expires DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX in_flight_slots_by_key ON in_flight_slots (key_id, expires);
    CREATE INDEX in_flight_slots_by_server ON in_flight_slots (server);
    """,
)


class SharedSlots(Database):
    """`LocalSlots` in the shared database, so one key's caps hold across servers. Each slot is a lease: this
    server renews all of its own every third of `lease_s` while they run and deletes them when they end; the slots
    of a server that died stop counting once their leases run out. Times are wall-clock."""

    MIGRATIONS = SLOT_MIGRATIONS
    SCHEMA = "in_flight_slots"
    clock: ClassVar[Callable[[], float]] = staticmethod(time.time)

    def __init__(self, location: Location, lease_s: float = SLOT_LEASE_S) -> None:
        super().__init__(location, "in-flight-slots")
        self.server = uuid.uuid4().hex  # this process: whose leases it renews
        self.lease_s = lease_s
        self._renewal: asyncio.Task | None = None

    async def open(self) -> None:
        await super().open()
        self._renewal = start_supervised("in-flight slot leases", self._renew_forever)

    async def close(self) -> None:
        await stop(self._renewal)
        await self._run(self._release_server)
        await super().close()

    async def acquire(self, key_id: str, stream: bool, caps: InFlightCaps) -> Slot:
        slot = Slot(key_id, stream)
        await self._run(self._acquire, slot, caps, self.clock())
        return slot

    def _acquire(self, slot: Slot, caps: InFlightCaps, now: float) -> None:
        with self.db.transaction():
            # Takes the key's row lock in PostgreSQL (SQLite's write lock is already held): one admission at a time.
            self.db.execute(
                "INSERT INTO in_flight_keys (key_id) VALUES (?) ON CONFLICT (key_id) DO UPDATE SET key_id = excluded.key_id",
                (slot.key_id,),
            )
            self.db.execute("DELETE FROM in_flight_slots WHERE key_id = ? AND expires <= ?", (slot.key_id, now))
            row = self.db.execute(
                "SELECT COUNT(*) AS requests, COALESCE(SUM(stream), 0) AS streams FROM in_flight_slots WHERE key_id = ?",
                (slot.key_id,),
            ).fetchone()
            check_in_flight(int(row["requests"]), int(row["streams"]), slot.stream, caps)
            self.db.execute(
                "INSERT INTO in_flight_slots (id, key_id, stream, server, expires) VALUES (?, ?, ?, ?, ?)",
                (slot.id, slot.key_id, int(slot.stream), self.server, now + self.lease_s),
            )

    def release(self, slot: Slot) -> None:
        """Give the slot back, off the caller's path (a request cancelled meanwhile still gives it back; a failed
        write is logged, and the slot stops counting when its lease runs out)."""
        try:
            released: Future[object] = self._thread.submit(
                lambda: self.db.execute("DELETE FROM in_flight_slots WHERE id = ?", (slot.id,))
            )
        except RuntimeError:  # closed: closing deleted all of this server's slots
            return
        released.add_done_callback(_log_release_failure)

    async def renew(self) -> None:
        await self._run(self._renew, self.clock())

    def _renew(self, now: float) -> None:
        self.db.execute("UPDATE in_flight_slots SET expires = ? WHERE server = ?", (now + self.lease_s, self.server))

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.renew()

    def _release_server(self) -> None:
        self.db.execute("DELETE FROM in_flight_slots WHERE server = ?", (self.server,))


def _log_release_failure(released: Future[object]) -> None:
    if not released.cancelled() and released.exception() is not None:
        logger.error("in-flight slot could not be released (it expires with its lease)", exc_info=released.exception())


def check_credits(credits: int | None) -> None:
    """Before any generation: a key with a credit balance needs some left (None: unlimited)."""
    if credits is not None and credits <= 0:
        raise InsufficientCredits()
