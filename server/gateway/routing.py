"""Routing: ordered fallbacks (`models`), and the proxy to upstream providers.

Which name goes where is the model catalog's answer (`serving/catalog.py`); a
`model@provider` route goes to a provider from models.yaml, any
OpenAI-compatible server. A fallback list is tried in order while a candidate
fails in a way another might not: rate limited, a server error, unreachable,
timed out, or a model this server cannot serve.

The proxy speaks the provider's wire format and gives back the engine's shape:
`CompletionDelta`s, so the serving pipeline runs memory, guardrails and
metering alike on every route.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import TypeVar

import httpx

from server.config import ProviderEntry
from server.engine import ChatTurn, CompletionDelta, TokenLogprob, ToolCallChunk, TopLogprob
from server.engine.errors import EngineUnavailable
from server.gateway.errors import GatewayError, ModelUnavailable, ProviderNotFound, UpstreamFailed
from server.observability.metrics import Metrics

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


def fallback_reason(exc: Exception) -> str:
    """A bounded label for why a candidate was passed over."""
    if isinstance(exc, UpstreamFailed):
        return "upstream_timeout" if exc.status == 504 else "upstream_error"
    if isinstance(exc, EngineUnavailable):
        return "engine_unavailable"
    return "model_unavailable"


async def first_that_serves(
    names: Sequence[str],
    attempt: Callable[[str], Awaitable[T]],
    on_fallback: Callable[[Exception], None] | None = None,
) -> T:
    """`attempt` on each name in turn until one succeeds; the last failure if none does.

    `on_fallback` hears of each failure that sends the request on to the next name (`Router.fell_back`).
    """
    for index, name in enumerate(names):
        try:
            return await attempt(name)
        except (GatewayError, EngineUnavailable) as exc:
            if index == len(names) - 1 or not is_worth_falling_back(exc):
                raise
            if on_fallback is not None:
                on_fallback(exc)
    raise AssertionError("no candidates")  # candidates() always gives at least one


class Router:
    """Providers from models.yaml and one pooled HTTP client each."""

    def __init__(self, providers: Sequence[ProviderEntry], metrics: Metrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
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

    def fell_back(self, exc: Exception) -> None:
        self.metrics.fell_back(fallback_reason(exc))

    @contextmanager
    def _counted(self, provider: str) -> Iterator[list[int]]:
        """One upstream call, counted by outcome: ok, http_error (the caller puts the status in the list it is
        given), timeout or unreachable."""
        started = time.perf_counter()
        status: list[int] = []
        try:
            with _reaching(provider):
                yield status
        except UpstreamFailed as exc:
            outcome = "timeout" if exc.status == 504 else "unreachable"
            self.metrics.upstream_call(provider, outcome, time.perf_counter() - started)
            raise
        outcome = "http_error" if status and status[0] >= 400 else "ok"
        self.metrics.upstream_call(provider, outcome, time.perf_counter() - started)

    async def complete(self, route: Route, payload: dict, request_id: str) -> dict:
        """A non-streaming chat completion from the route's provider (our request id passed on, for tracing)."""
        assert route.provider is not None
        with self._counted(route.provider) as status:
            response = await self._clients[route.provider].post(
                "/chat/completions", json=payload, headers={REQUEST_ID_HEADER: request_id}
            )
            status.append(response.status_code)
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
        with self._counted(route.provider) as status:
            response = await client.send(request, stream=True)
            status.append(response.status_code)
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


def upstream_payload(body: Mapping[str, object], route: Route, stream: bool, turns: Sequence[ChatTurn] | None) -> dict:
    """What the provider gets: the request's OpenAI fields, its own model name, and the conversation
    as the pipeline prepared it (`turns`, when memory changed it; else the client's messages as sent)."""
    forwarded = dict(body)
    forwarded["model"] = route.model
    if turns is not None:
        forwarded["messages"] = [_message(turn) for turn in turns]
    if stream:  # asked for always, to count the tokens; the pipeline reports usage only if the client asked
        forwarded["stream_options"] = {**(forwarded.get("stream_options") or {}), "include_usage": True}  # type: ignore[dict-item]
    return forwarded


def _message(turn: ChatTurn) -> dict:
    message: dict = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in turn.tool_calls
        ]
    if turn.tool_call_id is not None:
        message["tool_call_id"] = turn.tool_call_id
    return message


Counted = Callable[[int, int, int], None]  # (prompt, completion, cached prompt) tokens as the provider reports them


def _report(usage: dict, counted: Counted) -> None:
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    counted(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), int(cached or 0))


async def stream_deltas(chunks: AsyncIterator[dict], counted: Counted) -> AsyncIterator[CompletionDelta]:
    """A provider's `chat.completion.chunk`s as deltas; its usage chunk reported to `counted`."""
    async with aclosing(chunks) as source:  # type: ignore[type-var]  # closing these closes the provider's stream
        async for delta in _chunk_deltas(source, counted):
            yield delta


async def _chunk_deltas(chunks: AsyncIterator[dict], counted: Counted) -> AsyncIterator[CompletionDelta]:
    async for chunk in chunks:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            _report(usage, counted)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            produced = _delta(choice, delta.get("content") or "", delta.get("tool_calls"))
            if produced.text or produced.tool_calls or produced.logprobs or produced.finish_reason:
                yield produced


async def completion_deltas(completion: dict, counted: Counted) -> AsyncIterator[CompletionDelta]:
    """A provider's whole `chat.completion` as one delta per choice; its usage reported to `counted`."""
    usage = completion.get("usage")
    if isinstance(usage, dict):
        _report(usage, counted)
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        yield _delta(choice, message.get("content") or "", message.get("tool_calls"))


def _delta(choice: dict, text: str, tool_calls: object) -> CompletionDelta:
    calls = [
        ToolCallChunk(
            index=int(call.get("index", position)),
            id=call.get("id"),
            name=(call.get("function") or {}).get("name"),
            arguments=(call.get("function") or {}).get("arguments") or "",
        )
        for position, call in enumerate(tool_calls if isinstance(tool_calls, list) else ())
        if isinstance(call, dict)
    ]
    logprobs = (choice.get("logprobs") or {}).get("content")
    return CompletionDelta(
        index=int(choice.get("index") or 0),
        text=text,
        new_tokens=0,  # the provider's usage counts them
        finish_reason=choice.get("finish_reason"),
        tool_calls=calls,
        logprobs=[_logprob(entry) for entry in logprobs] if isinstance(logprobs, list) else None,
    )


def _logprob(entry: dict) -> TokenLogprob:
    return TokenLogprob(
        token=entry.get("token", ""),
        logprob=float(entry.get("logprob", 0.0)),
        bytes=entry.get("bytes") or [],
        top_logprobs=[
            TopLogprob(token=top.get("token", ""), logprob=float(top.get("logprob", 0.0)), bytes=top.get("bytes") or [])
            for top in entry.get("top_logprobs") or ()
        ],
    )
