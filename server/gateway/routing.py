"""Routing: `model@provider`, ordered fallbacks (`models`), and the proxy to upstream providers.

A name without `@` is served here (the engine's model, an alias or an
adapter); `model@provider` goes to a provider from models.yaml, any
OpenAI-compatible server. A fallback list is tried in order while a candidate
fails in a way another might not: rate limited, a server error, unreachable,
timed out, or a model this server cannot serve.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import TypeVar

import httpx

from server.config import ProviderEntry
from server.engine.errors import EngineUnavailable
from server.gateway.errors import GatewayError, ModelUnavailable, ProviderNotFound, UpstreamFailed

T = TypeVar("T")
LOCAL_PROVIDER = "local"
REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True, slots=True)
class Route:
    model: str  # the name the serving side knows
    provider: str | None  # None: this server's engine

    @property
    def label(self) -> str:
        """How the response reports it: the local name, or `model@provider`."""
        return self.model if self.provider is None else f"{self.model}@{self.provider}"


def parse_model_ref(name: str) -> tuple[str, str | None]:
    """`model@provider` -> (model, provider); a plain name -> (name, None)."""
    model, at, provider = name.rpartition("@")
    return (model, provider) if at and model and provider else (name, None)


def candidates(model: str, fallbacks: Sequence[str] | None) -> list[str]:
    """`model` first, then the fallbacks in order, each once."""
    return list(dict.fromkeys([model, *(fallbacks or ())]))


def is_worth_falling_back(exc: Exception) -> bool:
    if isinstance(exc, UpstreamFailed):
        return exc.retryable
    return isinstance(exc, ModelUnavailable | ProviderNotFound | EngineUnavailable)


async def first_that_serves(names: Sequence[str], attempt: Callable[[str], Awaitable[T]]) -> T:
    """`attempt` on each name in turn until one succeeds; the last failure if none does."""
    for index, name in enumerate(names):
        try:
            return await attempt(name)
        except (GatewayError, EngineUnavailable) as exc:
            if index == len(names) - 1 or not is_worth_falling_back(exc):
                raise
    raise AssertionError("no candidates")  # candidates() always gives at least one


class Router:
    """Providers from models.yaml and one pooled HTTP client each."""

    def __init__(self, providers: Sequence[ProviderEntry]) -> None:
        self.providers = {provider.name: provider for provider in providers}
        self._clients = {
            provider.name: httpx.AsyncClient(
                base_url=provider.base_url.rstrip("/"),
                headers={"Authorization": f"Bearer {provider.key}"} if provider.key else {},
                timeout=httpx.Timeout(provider.timeout_s),
            )
            for provider in providers
        }

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    def route(self, name: str, is_local: Callable[[str], bool]) -> Route:
        model, provider = parse_model_ref(name)
        if provider is None or provider == LOCAL_PROVIDER:
            if not is_local(model):
                raise ModelUnavailable(name)
            return Route(model, None)
        entry = self.providers.get(provider)
        if entry is None:
            raise ProviderNotFound(provider)
        if model not in entry.models:
            raise ModelUnavailable(name)
        return Route(model, provider)

    def endpoints(self, local_models: Sequence[str]) -> list[tuple[str, str]]:
        """Every (model, provider) pair a request may name as `model@provider`."""
        pairs = [(model, LOCAL_PROVIDER) for model in local_models]
        for provider in self.providers.values():
            pairs += [(model, provider.name) for model in provider.models]
        return pairs

    async def complete(self, route: Route, payload: dict, request_id: str) -> dict:
        """A non-streaming chat completion from the route's provider (our request id passed on, for tracing)."""
        assert route.provider is not None
        with _reaching(route.provider):
            response = await self._clients[route.provider].post(
                "/chat/completions", json=payload, headers={REQUEST_ID_HEADER: request_id}
            )
        if response.status_code >= 400:
            raise _failure(route.provider, response.status_code, response.content)
        return response.json()

    async def stream(self, route: Route, payload: dict, request_id: str) -> AsyncIterator[dict]:
        """The provider's chunks as parsed JSON; its HTTP errors are raised here, before any chunk."""
        assert route.provider is not None
        client = self._clients[route.provider]
        request = client.build_request(
            "POST", "/chat/completions", json=payload, headers={REQUEST_ID_HEADER: request_id}
        )
        with _reaching(route.provider):
            response = await client.send(request, stream=True)
        if response.status_code >= 400:
            body = await response.aread()
            await response.aclose()
            raise _failure(route.provider, response.status_code, body)
        return _chunks(route.provider, response)


@contextmanager
def _reaching(provider: str) -> Iterator[None]:
    """Connection failures and timeouts as UpstreamFailed (504 for a timeout, else 502)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamFailed(provider, 504, f"timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise UpstreamFailed(provider, 502, f"unreachable ({type(exc).__name__})") from exc


async def _chunks(provider: str, response: httpx.Response) -> AsyncIterator[dict]:
    try:
        async with aclosing(response.aiter_lines()) as lines:
            async for line in lines:
                data = line.removeprefix("data:").strip() if line.startswith("data:") else None
                if data == "[DONE]":
                    return
                if data:
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise UpstreamFailed(provider, 502, "failed midway", chunk)
                    yield chunk
    except httpx.HTTPError as exc:
        raise UpstreamFailed(provider, 502, f"stream broke off ({type(exc).__name__})") from exc
    finally:
        await response.aclose()


def _failure(provider: str, status: int, content: bytes) -> UpstreamFailed:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else content[:200].decode(errors="replace")
    return UpstreamFailed(provider, status, f"HTTP {status}: {message}", body if error else None)
