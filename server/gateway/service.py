"""The gateway's steps around one chat request, for `api/chat.py` to call in order.

`Gateway` holds the stores (keys, usage, templates), the rate limiter and the
router. A `RequestAccount` collects what the usage record needs as the request
goes; `settle` debits credits, counts tokens against the rate limit and queues
the record, for failures too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.config import GatewaySettings
from server.gateway.errors import NotAllowed
from server.gateway.keys import KeyStore, Principal
from server.gateway.limits import RateLimiter, check_credits
from server.gateway.routing import Route, Router
from server.gateway.templates import TemplateStore
from server.gateway.usage import UsageRecord, UsageStore


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
    session_id: str | None = None
    user: str | None = None
    tags: tuple[str, ...] = ()
    signature: str | None = None
    region: str | None = None
    query_body: str | None = None
    log_response_body: bool = False
    response_body: str | None = None

    def served_by(self, route: Route, model: str, adapter: str | None = None) -> None:
        """`model`: the canonical name (not the alias the request used)."""
        self.model, self.provider, self.adapter = model, route.provider, adapter

    def respond(self, prompt_tokens: int, completion_tokens: int, body: object) -> None:
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        if self.log_response_body:
            self.response_body = body if isinstance(body, str) else json.dumps(body)


def _allowed(name: str, allowed: Sequence[str] | None) -> bool:
    return allowed is None or name in allowed


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        keys: KeyStore,
        usage: UsageStore,
        templates: TemplateStore,
        router: Router,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.usage = usage
        self.templates = templates
        self.router = router
        self.limiter = RateLimiter()

    def open_account(self, request_id: str, principal: Principal) -> RequestAccount:
        return RequestAccount(request_id, principal)

    def log_bodies(self, requested: bool) -> bool:
        """Bodies are stored when the request allows it (default yes) and the server does not forbid it."""
        return requested and self.settings.log_bodies

    def authorize(self, principal: Principal, names: Sequence[str], adapter: str | None) -> None:
        """403 for a model (any of its names) or an adapter the key may not use."""
        key = principal.key
        if key is None:
            return
        for name in names:
            if not _allowed(name, key.allowed_models):
                raise NotAllowed("model", name, "model")
        if adapter is not None and not _allowed(adapter, key.allowed_adapters):
            raise NotAllowed("adapter", adapter, "lora_name")

    def admit(self, principal: Principal) -> None:
        """Before any generation: credits left (402), then the rate limit (429)."""
        key = principal.key
        if key is None:
            return
        check_credits(key.credits)
        self.limiter.admit(key.id, key.limits, time.monotonic())

    def settle(self, account: RequestAccount, status: int, error_code: str | None = None) -> None:
        """After the request (also when it failed): debit, count tokens, record usage. Never blocks."""
        tokens = account.prompt_tokens + account.completion_tokens
        key = account.principal.key
        if key is not None and tokens:
            if key.credits is not None:
                self.keys.debit(key.id, tokens)
            self.limiter.spend(key.id, tokens, time.monotonic())
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
