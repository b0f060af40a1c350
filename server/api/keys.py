"""`/v1/keys`: API key administration (admin keys only). A new key is shown once, at creation."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from server.api.errors import read_json_object
from server.api.middleware import principal_of
from server.api.protocol_resources import KeyObject, ListOf, NewKeyObject, json_response
from server.gateway.errors import AdminOnly
from server.gateway.keys import ApiKey, KeySpec, KeyStore

NAME_MAX = 128


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=NAME_MAX)
    admin: bool = False
    allowed_models: list[str] | None = None
    allowed_adapters: list[str] | None = None
    default_model: str | None = Field(None, min_length=1)
    credits: int | None = Field(None, ge=0, description="tokens; null: unlimited")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)

    def spec(self) -> KeySpec:
        return KeySpec(
            name=self.name,
            admin=self.admin,
            allowed_models=tuple(self.allowed_models) if self.allowed_models is not None else None,
            allowed_adapters=tuple(self.allowed_adapters) if self.allowed_adapters is not None else None,
            default_model=self.default_model,
            credits=self.credits,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
        )


def key_json(key: ApiKey) -> KeyObject:
    return KeyObject(**key.public_view())


def _admin_store(request: Request) -> KeyStore:
    if not principal_of(request.scope).admin:
        raise AdminOnly()
    return request.app.state.keys


async def create_key(request: Request) -> Response:
    store = _admin_store(request)
    body = CreateKey.model_validate(await read_json_object(request))
    key, secret = await store.create(body.spec())
    return json_response(NewKeyObject(**key.public_view(), key=secret), status_code=201)


async def list_keys(request: Request) -> Response:
    keys = await _admin_store(request).list()
    return json_response(ListOf(data=[key_json(key) for key in keys]))


async def get_key(request: Request) -> Response:
    key = await _admin_store(request).get(request.path_params["key_id"])
    return json_response(key_json(key))


class AddCredits(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    amount: int = Field(ge=1, le=10**15, description="credits (tokens) to add to the key's balance")


async def add_credits(request: Request) -> Response:
    """`POST /v1/keys/{key_id}/credits` `{"amount": n}`: an admin tops up a key (one without a balance gets one)."""
    store = _admin_store(request)
    body = AddCredits.model_validate(await read_json_object(request))
    key = await store.add_credits(request.path_params["key_id"], body.amount)
    return json_response(key_json(key))


async def revoke_key(request: Request) -> Response:
    key = await _admin_store(request).revoke(request.path_params["key_id"])
    return json_response(key_json(key))
