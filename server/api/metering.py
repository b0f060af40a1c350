"""The gateway's steps for endpoints that use a model without the chat pipeline (embeddings, completions,
tokenize): a usage record per request (failures too), the key's model limits, credits and rate limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from server.api.errors import status_of
from server.api.middleware import principal_of, request_id_of
from server.config import ModelEntry, Settings
from server.engine import Engine
from server.gateway.errors import ModelUnavailable
from server.gateway.routing import Route
from server.gateway.service import Gateway, RequestAccount


async def metered(request: Request, handle: Callable[[Gateway, RequestAccount], Awaitable[Response]]) -> Response:
    """Run `handle` with the request's usage account; an error settles it with the error's status.

    `handle` settles the account itself once it has answered (a stream: when the stream ends).
    """
    gateway: Gateway = request.app.state.gateway
    account = gateway.open_account(request_id_of(request.scope), principal_of(request.scope))
    try:
        return await handle(gateway, account)
    except Exception as exc:
        status, code = status_of(exc)
        gateway.settle(account, status, code)
        raise


@dataclass(frozen=True, slots=True)
class LocalModel:
    entry: ModelEntry
    adapter: str | None
    adapter_param: str

    @property
    def public_name(self) -> str:
        return self.adapter or self.entry.name


def local_model(settings: Settings, engine: Engine, name: str, lora_name: str | None) -> LocalModel:
    """The served model (or one of its adapters, named as `model` in vLLM's way) that `name` names; else 404."""
    if name in engine.adapters:
        return LocalModel(settings.served, name, "model")
    entry = settings.find_model(name)
    if entry is None or entry.name != settings.served.name:
        raise ModelUnavailable(name)
    return LocalModel(entry, lora_name, "lora_name")


def admit_local(gateway: Gateway, account: RequestAccount, model: LocalModel, *, generates: bool = True) -> None:
    """The key may use the model (and adapter); then, for generation, credits and the rate limit."""
    gateway.authorize(account.principal, [model.entry.name], model.adapter)
    if generates:
        gateway.admit(account.principal)
    account.served_by(Route(model.entry.name, None), model.entry.name, model.adapter)
