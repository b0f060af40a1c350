"""Per-key rate limits (requests and tokens per minute) and the credits check.

Sliding window over the last 60 s. `RateLimiter` keeps the windows in this
process's memory (a restart forgets them, which at worst lets one extra
minute's worth through); `SharedRateLimiter` keeps them in the shared database
(`database_url`), so servers behind one load balancer enforce one limit. The
decision is one pure function of the window, the limits and the clock, which
callers pass in.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import ClassVar

from server.gateway.errors import InsufficientCredits, RateLimited
from server.storage import Database, Location

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


def check_credits(credits: int | None) -> None:
    """Before any generation: a key with a credit balance needs some left (None: unlimited)."""
    if credits is not None and credits <= 0:
        raise InsufficientCredits()
