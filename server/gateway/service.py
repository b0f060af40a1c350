"""The gateway's sequence around one request: admission in, settlement out, exactly once.

`Gateway` holds the stores (keys, usage, templates), the rate limiter and the
router. `async with gateway.admission(account, names, adapters) as admission`
authorizes every candidate model and adapter, admits the request under the
key's rate limit, lets the pipeline reserve credits before it generates
(`admission.reserve`: an atomic conditional debit in the key store, so
concurrent requests never take a balance below zero), and on leaving settles
once, whatever happened: the reservation's unused part refunded, tokens counted
against the rate limit, the usage record queued with the request's outcome.
A `RequestAccount` collects what the usage record needs as the request goes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from server.config import GatewaySettings
from server.errors import outcome_of
from server.gateway.errors import (
    AdapterHidden,
    AdapterNotOwned,
    InsufficientCredits,
    NotAllowed,
    RateLimited,
    WorkNotCovered,
)
from server.gateway.keys import KeyStore, Principal
from server.gateway.limits import RateLimiter, SharedRateLimiter, SharedSlots, check_credits
from server.gateway.routing import Route, Router
from server.gateway.templates import TemplateStore
from server.gateway.usage import UsageRecord, UsageStore
from server.observability.metrics import Metrics


@dataclass(slots=True)
class RequestAccount:
    """What one request's usage record is built from, filled in step by step."""

    request_id: str
    principal: Principal
    started: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.time)
    model: str | None = None
    provider: str | None = None
    adapter: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, served from the engine's prefix cache (or as the provider reports)
    session_id: str | None = None
    user: str | None = None
    tags: tuple[str, ...] = ()
    signature: str | None = None
    region: str | None = None
    query_body: str | None = None
    log_response_body: bool = False
    response_body: str | None = None
    priced: bool = False  # charged apart at a metered rate (api/metering.py): settling takes no credits for tokens

    def served_by(self, route: Route, model: str, adapter: str | None = None) -> None:
        """`model`: the canonical name (not the alias the request used)."""
        self.model, self.provider, self.adapter = model, route.provider, adapter

    def respond(self, prompt_tokens: int, completion_tokens: int, body: object) -> None:
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        if self.log_response_body:
            self.response_body = body if isinstance(body, str) else json.dumps(body)


def _allowed(name: str, allowed: Sequence[str] | None) -> bool:
    return allowed is None or name in allowed


class AdapterOwnership(Protocol):
    """Who owns an adapter (`engine.adapters.Ownership`)."""

    def may_use(self, owner: str, admin: bool) -> bool: ...

    def may_change(self, owner: str, admin: bool) -> bool: ...


def authorize_adapter(
    principal: Principal,
    adapter: str,
    ownership: AdapterOwnership | None,
    *,
    param: str = "lora_name",
    change: bool = False,
) -> None:
    """May `principal` run on (or, with `change`, add versions to / activate / unload / delete / train) `adapter`?

    The key's `allowed_adapters` first (403), then ownership: another key's unshared adapter is answered as
    missing (404), a shared one may be used but not changed (403). `ownership` None: no such adapter yet
    (creating it makes `principal` its owner)."""
    key = principal.key
    if key is not None and not _allowed(adapter, key.allowed_adapters):
        raise NotAllowed("adapter", adapter, param)
    if ownership is None:
        return
    if not ownership.may_use(principal.owner, principal.admin):
        raise AdapterHidden(adapter, param)
    if change and not ownership.may_change(principal.owner, principal.admin):
        raise AdapterNotOwned(adapter, param)


@dataclass(frozen=True, slots=True)
class Charge:
    """Credits taken for one piece of metered work (0 when free or unmetered); refunded if the work fails."""

    key_id: str | None
    credits: int


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        keys: KeyStore,
        usage: UsageStore,
        templates: TemplateStore,
        router: Router,
        metrics: Metrics | None = None,
        limiter: RateLimiter | SharedRateLimiter | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.settings = settings
        self.keys = keys
        self.usage = usage
        self.templates = templates
        self.router = router
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.in_flight: SharedSlots | None = None  # requests in flight per key, where servers share a database

    @asynccontextmanager
    async def admission(
        self, account: RequestAccount, names: Sequence[str], adapters: Sequence[tuple[str, str]] = ()
    ) -> AsyncIterator[Admission]:
        """Authorize (`names`: every candidate's canonical model name; `adapters`: (adapter, param) pairs),
        admit, then hand out the admission; settle exactly once on leaving, with the outcome."""
        admission = Admission(self, account)
        try:
            self.authorize(account.principal, names, adapters)
            await self.admit(account.principal)
            yield admission
        except BaseException as exc:
            admission.settle(*outcome_of(exc))
            raise
        admission.settle(200)

    def refused(self, account: RequestAccount, status: int, error_code: str | None) -> None:
        """Record a request that failed before admission (bad input, an unknown template)."""
        Admission(self, account).settle(status, error_code)

    def authorize(self, principal: Principal, names: Sequence[str], adapters: Sequence[tuple[str, str]] = ()) -> None:
        """403 for a model (any of its names) or an adapter the key may not use."""
        key = principal.key
        if key is None:
            return
        try:
            for name in names:
                if not _allowed(name, key.allowed_models):
                    raise NotAllowed("model", name, "model")
            for adapter, param in adapters:
                if not _allowed(adapter, key.allowed_adapters):
                    raise NotAllowed("adapter", adapter, param)
        except NotAllowed:
            self.metrics.refused("not_allowed", key.id)
            raise

    def authorize_adapter(
        self, principal: Principal, adapter: str, ownership: AdapterOwnership | None, **kwargs: object
    ) -> None:
        authorize_adapter(principal, adapter, ownership, **kwargs)  # type: ignore[arg-type]

    async def charge(self, principal: Principal, credits: float, what: str) -> Charge:
        """Take `credits` (rounded up) from the key's balance at once, atomically: never below zero (402 when the
        balance cannot cover it). Keys without a balance, static keys and open servers are not charged."""
        key = principal.key
        amount = max(0, -int(-credits // 1))
        if key is None or key.credits is None or amount == 0:
            return Charge(None, 0)
        if not await self.keys.take(key.id, amount):
            self.metrics.refused("credits", key.id)
            raise WorkNotCovered(what, amount)
        self.metrics.credits_spent.labels(key.id).inc(amount)
        return Charge(key.id, amount)

    async def refund(self, charge: Charge) -> None:
        if charge.key_id is not None and charge.credits:
            await self.keys.add_credits(charge.key_id, charge.credits)

    async def admit(self, principal: Principal) -> None:
        """Before any generation: credits left (402), then the rate limit (429)."""
        key = principal.key
        if key is None:
            return
        try:
            check_credits(key.credits)
            await self.limiter.admit(key.id, key.limits, self.limiter.clock())
        except InsufficientCredits:
            self.metrics.refused("credits", key.id)
            raise
        except RateLimited:
            self.metrics.refused("rate_limit", key.id)
            raise

    def _settle(self, account: RequestAccount, reserved: int, status: int, error_code: str | None) -> None:
        """After the request (also when it failed): settle credits, count tokens, record usage. Never blocks."""
        tokens = account.prompt_tokens + account.completion_tokens
        used = 0 if account.priced else tokens
        key = account.principal.key
        debited = 0
        if key is not None and key.credits is not None and (reserved or used):
            self.keys.settle_reservation(key.id, reserved, used)
            debited = used
        if key is not None and tokens and key.limits.tokens_per_minute is not None:
            self.limiter.spend(key.id, tokens, self.limiter.clock())
        self.metrics.model_request(
            account.model,
            account.adapter,
            account.provider,
            status,
            key.id if key is not None else None,
            account.prompt_tokens,
            account.completion_tokens,
            debited,
        )
        self.usage.record(
            UsageRecord(
                request_id=account.request_id,
                created_at=account.created_at,
                owner=account.principal.owner,
                key_id=key.id if key is not None else None,
                model=account.model,
                provider=account.provider,
                adapter=account.adapter,
                prompt_tokens=account.prompt_tokens,
                completion_tokens=account.completion_tokens,
                latency_ms=(time.monotonic() - account.started) * 1000,
                status=status,
                error_code=error_code,
                session_id=account.session_id,
                user=account.user,
                tags=account.tags,
                signature=account.signature,
                region=account.region,
                query_body=account.query_body,
                response_body=account.response_body,
            )
        )


class Admission:
    """One admitted request: reserves credits before generating, settles once."""

    def __init__(self, gateway: Gateway, account: RequestAccount) -> None:
        self._gateway = gateway
        self.account = account
        self.reserved = 0
        self.settled = False

    async def reserve(self, tokens: int) -> None:
        """Hold `tokens` credits (the most the request may use) before generating; 402 when the balance
        cannot cover them. Called again (another fallback route), it only tops the reservation up."""
        key = self.account.principal.key
        more = tokens - self.reserved
        if key is None or key.credits is None or more <= 0:
            return
        left = await self._gateway.keys.reserve(key.id, more)
        if left is not None:
            self._gateway.metrics.refused("credits", key.id)
            raise InsufficientCredits(tokens, left + self.reserved)
        self.reserved += more

    def settle(self, status: int, error_code: str | None = None) -> None:
        if self.settled:
            return
        self.settled = True
        self._gateway._settle(self.account, self.reserved, status, error_code)
