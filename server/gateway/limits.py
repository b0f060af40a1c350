"""Per-key rate limits (requests and tokens per minute) and the credits check.

Sliding window over the last 60 s, kept in memory per key: a restart forgets
the window, which at worst lets one extra minute's worth through. Pure apart
from the clock, which callers pass in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from server.gateway.errors import InsufficientCredits, RateLimited

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


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


class RateLimiter:
    """`admit` before a request (counts it), `spend` after it with the tokens it used."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def admit(self, key_id: str, limits: Limits, now: float) -> None:
        """Count one request, or raise RateLimited with the seconds until it would fit."""
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            return
        window = self._windows.setdefault(key_id, _Window())
        window.expire(now)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm is not None and len(window.requests) >= rpm:
            # The oldest request that must leave the window before one more fits.
            oldest = window.requests[len(window.requests) - rpm]
            raise RateLimited(f"{rpm} requests per minute", oldest + WINDOW_S - now)
        if tpm is not None and window.token_total >= tpm:
            raise RateLimited(f"{tpm} tokens per minute", _tokens_free_at(window, tpm) - now)
        window.requests.append(now)

    def spend(self, key_id: str, tokens: int, now: float) -> None:
        window = self._windows.get(key_id)
        if window is None or tokens <= 0:
            return
        window.tokens.append((now, tokens))
        window.token_total += tokens


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
