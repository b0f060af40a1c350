"""Admission for endpoints that use the local model without the chat pipeline (embeddings, completions,
tokenize): a usage record per request (failures too, settled exactly once), the key's model limits,
credits and rate limit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from server.api import metering
from server.api.errors import status_of, to_api_error
from server.api.middleware import principal_of, request_id_of
from server.config import ModelEntry
from server.engine.errors import AdapterOfAnotherModel
from server.errors import CLIENT_CLOSED, CLIENT_CLOSED_CODE, ServerError
from server.gateway.errors import ModelUnavailable
from server.gateway.routing import LOCAL_PROVIDER, Route, parse_model_ref
from server.gateway.service import Admission, Gateway, RequestAccount
from server.guardrails.errors import GuardrailViolation
from server.serving.catalog import ModelCatalog

T = TypeVar("T")


async def metered(request: Request, handle: Callable[[Gateway, Admission], Awaitable[Response]]) -> Response:
    """Run `handle` with the request's admission; an error settles it with the error's status.

    `handle` settles the admission itself once it has answered (a stream: when the stream ends).
    """
    gateway: Gateway = request.app.state.gateway
    admission = Admission(gateway, RequestAccount(request_id_of(request.scope), principal_of(request.scope)))
    try:
        return await handle(gateway, admission)
    except Exception as exc:
        admission.settle(*status_of(exc))
        raise


@dataclass(frozen=True, slots=True)
class LocalModel:
    entry: ModelEntry
    adapter: str | None
    adapter_param: str

    @property
    def public_name(self) -> str:
        return self.adapter or self.entry.name


def local_model(catalog: ModelCatalog, name: str, lora_name: str | None) -> LocalModel:
    """The served model (or one of its adapters, named as `model` in vLLM's way) that `name` names, as chat reads it
    (`name@local` too); else 404."""
    model, provider = parse_model_ref(name)
    if provider == LOCAL_PROVIDER:
        name = model
    if catalog.is_adapter(name):
        return LocalModel(catalog.parent_entry(name), name, "model")
    entry = catalog.base_model(name)
    if entry is None:
        raise ModelUnavailable(name)
    if lora_name is not None:
        if not catalog.is_adapter(lora_name):
            catalog.adapters.get(lora_name)  # a missing adapter is a 404, never silently the base model
        parent = catalog.parent_entry(lora_name)
        if parent is not entry:
            raise AdapterOfAnotherModel(lora_name, parent.name, entry.name)
    return LocalModel(entry, lora_name, "lora_name")


@asynccontextmanager
async def priced(request: Request, admission: Admission, rate: float, tokens: int, what: str) -> AsyncIterator[None]:
    """Charge `rate` credits per token before the work in the block (402 when the balance cannot cover them),
    refunded if it fails; the admission's settling then takes no credits for the request's tokens."""
    admission.account.priced = True
    async with metering.metered(request, rate * tokens, what):
        yield


async def admit_local(gateway: Gateway, admission: Admission, model: LocalModel, *, generates: bool = True) -> None:
    """The key may use the model (and adapter); then, for generation, credits and the rate limit."""
    principal = admission.account.principal
    adapters = [(model.adapter, model.adapter_param)] if model.adapter is not None else []
    gateway.authorize(principal, [model.entry.name], adapters)
    if generates:
        await gateway.admit(principal)
    admission.account.served_by(Route(model.entry.name, None), model.entry.name, model.adapter)


async def started(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """`items` with the first one already produced (so its errors are raised before answering 200)."""
    first = await anext(items)

    async def replay() -> AsyncIterator[T]:
        yield first
        async for item in items:
            yield item

    return replay()


async def error_events(chunks: AsyncIterator[str], admission: Admission) -> AsyncIterator[dict]:
    """SSE events for the chunks, `[DONE]` at the end, an error event if generation fails midway.

    The admission is settled once: 200, the error's status, or 499 when the client left.
    """
    outcome: tuple[int, str | None] = (CLIENT_CLOSED, CLIENT_CLOSED_CODE)
    try:
        async for data in chunks:
            yield {"data": data}
    except ServerError as exc:
        error = to_api_error(exc)
        outcome = (error.status, error.code)
        yield {"data": json.dumps(error.body())}
        if isinstance(exc, GuardrailViolation):  # closed on purpose
            yield {"data": "[DONE]"}
    else:
        outcome = (200, None)
        yield {"data": "[DONE]"}
    finally:
        admission.settle(*outcome)
