"""`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`: OpenAI's Responses API over the chat pipeline.

The request is translated into a chat completions body (server/conversations/responses.py), run through
`run_chat` (the one boundary to the chat pipeline: gateway steps, usage, credits, memory, guardrails
all apply as on chat), and the chat answer translated back: one Response, or its typed stream events.
Responses are stored per key (`store`, default true) so `previous_response_id` can continue them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.chat_bridge import CLIENT_CLOSED, ChatStreamFailed, run_chat
from server.api.errors import from_validation_error, read_json_object
from server.api.middleware import caller_of
from server.api.stored_chat import list_page, list_query, page_of
from server.conversations.responses import (
    ResponseEvents,
    ResponseShell,
    ResponsesRequest,
    chat_payload,
    listed_input_items,
    new_id,
    response_object,
    sse,
)
from server.conversations.store import ConversationStore, StoredResponse


def _store(request: Request) -> ConversationStore:
    return request.app.state.conversations


async def create_response(request: Request) -> Response:
    payload = await read_json_object(request)
    try:
        body = ResponsesRequest.model_validate(payload, strict=True)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    store, owner = _store(request), caller_of(request.scope)
    history: list[dict] = []
    if body.previous_response_id is not None:
        previous = await store.get_response(owner, body.previous_response_id, "previous_response_id")
        history = previous.conversation
    chat, conversation = chat_payload(body, payload, history)
    shell = ResponseShell(new_id("resp"), body)
    answer = await run_chat(request, chat)

    async def keep(response: dict, turn: dict) -> None:
        if body.store:
            stored = StoredResponse(
                shell.id, shell.created_at, response, [*conversation, turn], listed_input_items(body.input)
            )
            await store.save_response(owner, stored)

    if answer.chunks is not None:
        return EventSourceResponse(
            _events(answer.chunks, ResponseEvents(shell), keep, chat.get("model") or ""),
            sep="\n",
            ping=15,
            headers=answer.headers,
        )
    if answer.completion is None:
        return Response(status_code=CLIENT_CLOSED)
    response, turn = response_object(shell, answer.completion)
    await keep(response, turn)
    return JSONResponse(response, headers=answer.headers)


async def _events(chunks: AsyncIterator[dict], translator: ResponseEvents, keep, model: str) -> AsyncIterator[dict]:
    try:
        first = await anext(chunks, None)
        for event in translator.start((first or {}).get("model") or model):
            yield sse(event)
        if first is not None:
            for event in translator.feed(first):
                yield sse(event)
        async for chunk in chunks:
            for event in translator.feed(chunk):
                yield sse(event)
    except ChatStreamFailed as exc:
        for event in translator.failed(exc.error):
            yield sse(event)
        return
    finally:
        await chunks.aclose()
    closing = translator.finish()
    await keep(closing[-1]["response"], translator.assistant_turn())
    for event in closing:
        yield sse(event)


async def get_response(request: Request) -> JSONResponse:
    stored = await _store(request).get_response(caller_of(request.scope), request.path_params["response_id"])
    return JSONResponse(stored.response)


async def list_input_items(request: Request) -> JSONResponse:
    """`GET /v1/responses/{id}/input_items?after=&limit=&order=` (newest first by default, as OpenAI)."""
    params = dict(request.query_params)
    params.setdefault("order", "desc")
    query = list_query(params, {"after", "limit", "order", "include"})
    stored = await _store(request).get_response(caller_of(request.scope), request.path_params["response_id"])
    data, has_more = page_of(stored.input_items, query.after, query.limit, query.order)
    return JSONResponse(list_page(data, has_more))


async def delete_response(request: Request) -> JSONResponse:
    response_id = request.path_params["response_id"]
    await _store(request).delete_response(caller_of(request.scope), response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
