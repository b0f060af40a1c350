"""The per-key sliding-window rate limiter and the credits check."""

from __future__ import annotations

import pytest

from server.gateway.errors import InsufficientCredits, RateLimited
from server.gateway.limits import WINDOW_S, Limits, RateLimiter, check_credits


def test_requests_per_minute_admits_up_to_the_limit_then_says_when_one_more_fits() -> None:
    limiter = RateLimiter()
    limits = Limits(requests_per_minute=2)
    limiter.admit("k", limits, now=100.0)
    limiter.admit("k", limits, now=110.0)
    with pytest.raises(RateLimited) as refused:
        limiter.admit("k", limits, now=120.0)
    assert refused.value.retry_after_s == pytest.approx(100.0 + WINDOW_S - 120.0)
    limiter.admit("k", limits, now=100.0 + WINDOW_S + 0.01)  # the first request has left the window


def test_refused_requests_do_not_count() -> None:
    limiter = RateLimiter()
    limits = Limits(requests_per_minute=1)
    limiter.admit("k", limits, now=0.0)
    for now in (1.0, 2.0, 3.0):
        with pytest.raises(RateLimited):
            limiter.admit("k", limits, now=now)
    limiter.admit("k", limits, now=WINDOW_S + 0.5)


def test_tokens_per_minute_counts_spent_tokens_and_retries_when_enough_leave() -> None:
    limiter = RateLimiter()
    limits = Limits(tokens_per_minute=100)
    limiter.admit("k", limits, now=0.0)
    limiter.spend("k", 60, now=1.0)
    limiter.admit("k", limits, now=2.0)
    limiter.spend("k", 50, now=3.0)
    with pytest.raises(RateLimited) as refused:
        limiter.admit("k", limits, now=4.0)
    # 110 tokens in the window: once the 60 from t=1 leave, 50 < 100.
    assert refused.value.retry_after_s == pytest.approx(1.0 + WINDOW_S - 4.0)


def test_keys_have_separate_windows_and_no_limits_means_no_window() -> None:
    limiter = RateLimiter()
    limiter.admit("a", Limits(requests_per_minute=1), now=0.0)
    limiter.admit("b", Limits(requests_per_minute=1), now=0.0)
    for _ in range(100):
        limiter.admit("c", Limits(), now=0.0)


def test_credits() -> None:
    check_credits(None)
    check_credits(1)
    for exhausted in (0, -5):
        with pytest.raises(InsufficientCredits):
            check_credits(exhausted)
