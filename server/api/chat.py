"""`POST /v1/chat/completions`: wire request -> `ChatCall`, `ChatRun` -> JSON or SSE, errors -> OpenAI errors.

What a chat request does is the serving pipeline's (`server/serving/pipeline.py`); this module only translates.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from server.api import stored_chat
from server.api.chat_request import checked_limits, describe, read_chat_request, to_call
from server.api.chat_stream import CompletionIdentity, collect_completion, stream_chunks
from server.api.errors import read_json_object, status_of, to_api_error
from server.api.middleware import caller_of, principal_of, request_id_of
from server.api.protocol import ChatCompletionRequest, NightlyInfo
from server.config import Settings
from server.errors import ServerError
from server.gateway.service import Gateway, RequestAccount
from server.guardrails.errors import GuardrailViolation
from server.serving.call import ChatRun
from server.serving.pipeline import ChatService

T = TypeVar("T")


async def chat_completions(request: Request) -> Response:
    started = await start_chat(request)
    body, run = started.body, started.run
    identity = identity_of(run, function_call=body.answers_with_function_call)
    kept = stored_chat.keeper(request, started.payload) if body.store else None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = stream_chunks(run.deltas, identity, include_usage=include_usage, usage=run.usage)
        if kept is not None:
            chunks = kept.streamed(chunks)
        return EventSourceResponse(sse_events(chunks, run), sep="\n", ping=15, headers=run.headers)
    completion = await until_disconnected(request, collect_completion(run.deltas, identity, run.usage))
    if completion is None:  # the client left; nobody reads this
        return Response(status_code=499)
    answer = completion.model_dump_json()
    if kept is not None:
        await kept.whole(json.loads(answer))
    return Response(answer, media_type="application/json", headers=run.headers)


@dataclass(frozen=True, slots=True)
class StartedChat:
    body: ChatCompletionRequest
    payload: dict  # the request as run: template expanded, defaults applied
    run: ChatRun


async def start_chat(request: Request, payload: dict | None = None) -> StartedChat:
    """The chat pipeline for `payload` (None: the request's JSON body), started: wire in, `ChatRun` out.

    Endpoints that translate to chat (Responses) call this; a request refused before admission is recorded."""
    settings: Settings = request.app.state.settings
    gateway: Gateway = request.app.state.gateway
    service: ChatService = request.app.state.chat
    account = RequestAccount(request_id_of(request.scope), principal_of(request.scope))
    try:
        if payload is None:
            payload = await read_json_object(request)
        body, payload = await read_chat_request(payload, account.principal, gateway.templates)
        checked_limits(body, settings)
        describe(account, body, payload, gateway.settings.log_bodies)
        call = to_call(body, payload, account, caller_of(request.scope))
    except Exception as exc:
        gateway.refused(account, *status_of(exc))  # the admitted ones are settled by the pipeline
        raise
    return StartedChat(body, payload, await service.start(call))


def identity_of(run: ChatRun, *, function_call: bool = False) -> CompletionIdentity:
    """`function_call`: answer a call as the deprecated `function_call` (the request used `functions`)."""
    return CompletionIdentity(
        id=run.id,
        model=run.model,
        system_fingerprint=run.system_fingerprint,
        prompt_tokens=run.usage()[0],
        n=run.n,
        logprobs=run.logprobs,
        nightly=NightlyInfo(memory_group=run.memory.group, memories_used=run.memory.memories_used)
        if run.memory is not None
        else None,
        function_call=function_call,
        created=run.created,
    )


async def sse_events(chunks: AsyncIterator[str], run: ChatRun) -> AsyncIterator[dict]:
    """SSE events for the chunks, `[DONE]` at the end, an error event if generation fails midway.

    A policy violation still ends with `[DONE]`: the stream was closed on purpose."""
    try:
        async for data in chunks:
            yield {"data": data}
    except GuardrailViolation as exc:
        yield {"data": json.dumps(to_api_error(exc).body())}
        yield {"data": "[DONE]"}
    except ServerError as exc:
        yield {"data": json.dumps(to_api_error(exc).body())}
    else:
        yield {"data": "[DONE]"}
    finally:
        await run.aclose()  # settles a run the client left before its end


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it (and so aborting its engine request) if the client goes away."""
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        left = not task.done()
        if left:
            task.cancel()
            # A cancelled task is done only once it has run its cancellation: wait for that, never read it.
            await asyncio.gather(task, return_exceptions=True)
    return None if left else task.result()
