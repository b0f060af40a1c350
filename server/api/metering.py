"""Metering and quotas for the endpoints besides chat: charge before the work, refund if it fails.

Rates live in models.yaml (`metering`, 0: explicitly free); quotas in `security.quotas`. Admins and keys
without a credit balance are neither charged nor limited by quotas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from starlette.requests import Request

from server.api.middleware import principal_of
from server.engine import Engine
from server.gateway.errors import QuotaExceeded
from server.gateway.keys import Principal
from server.gateway.service import Charge, Gateway
from server.memory.service import MemoryService


def pays(principal: Principal) -> bool:
    return principal.key is not None and principal.key.credits is not None


async def tokens_of(request: Request, texts: Sequence[str]) -> int:
    """Tokens of the served model in `texts`, counted off the event loop (only for keys that pay)."""
    if not pays(principal_of(request.scope)):
        return 0
    engine: Engine = request.app.state.engine
    return await asyncio.to_thread(lambda: sum(engine.count_tokens(text) for text in texts))


@asynccontextmanager
async def metered(request: Request, credits: float, what: str) -> AsyncIterator[Charge]:
    """Charge `credits` (402 when the balance cannot cover them) for the work in the block; refunded if it fails."""
    gateway: Gateway = request.app.state.gateway
    charge = await gateway.charge(principal_of(request.scope), credits, what)
    try:
        yield charge
    except BaseException:
        await gateway.refund(charge)
        raise


async def check_memory_quota(request: Request, group_name: str, adding: int) -> None:
    """403 when the caller would own more memory groups, or hold more memories in one group, than allowed."""
    principal = principal_of(request.scope)
    if principal.admin:
        return
    memory: MemoryService = request.app.state.memory
    await memory.check_quota(principal.owner, group_name, adding, request.app.state.settings.security.quotas)


async def check_template_quota(request: Request) -> None:
    principal = principal_of(request.scope)
    if principal.admin:
        return
    quota = request.app.state.settings.security.quotas.templates
    if len(await request.app.state.templates.list(principal.owner, admin=False)) >= quota:
        raise QuotaExceeded.of("templates", quota, "name")
