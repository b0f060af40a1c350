"""The one boundary between the endpoints that translate to chat (Responses) and the chat pipeline:
`run_chat(request, payload)` runs a chat completions payload through the serving pipeline
(`server/serving`: admission, templates, memory, guardrails, routing, usage) and hands back the answer as data.

Pointing these endpoints at another chat implementation means changing this module only.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import Request

from server.api.chat import identity_of, start_chat, until_disconnected
from server.api.chat_stream import collect_completion, stream_chunks
from server.api.errors import to_api_error
from server.errors import CLIENT_CLOSED, ServerError
from server.serving.call import ChatRun

__all__ = ["CLIENT_CLOSED", "ChatAnswer", "ChatStreamFailed", "run_chat"]


class ChatStreamFailed(Exception):
    """A streamed chat failed (the engine failed, a guardrail closed it) midway; `error`: the OpenAI error object."""

    def __init__(self, error: dict) -> None:
        super().__init__(error.get("message", "the chat stream failed"))
        self.error = error


@dataclass(slots=True)
class ChatAnswer:
    """A chat completion as data: `completion` (not streamed), or `chunks` (streamed) to iterate once.

    Neither: the client left before the answer was ready. `headers`: the pipeline's extension headers.
    """

    completion: dict | None = None
    chunks: AsyncIterator[dict] | None = None
    headers: dict[str, str] = field(default_factory=dict)


async def _chunk_data(chunks: AsyncIterator[str], run: ChatRun) -> AsyncIterator[dict]:
    try:
        async for data in chunks:
            yield json.loads(data)
    except ServerError as exc:
        raise ChatStreamFailed(to_api_error(exc).body()["error"]) from exc
    finally:
        await run.aclose()  # settles the request (499 when we stopped early)


async def run_chat(request: Request, payload: dict) -> ChatAnswer:
    """Run `payload` (a chat completions request body) through the chat pipeline."""
    started = await start_chat(request, payload)
    body, run = started.body, started.run
    identity = identity_of(run, function_call=body.answers_with_function_call)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = stream_chunks(run.deltas, identity, include_usage=include_usage, usage=run.usage)
        return ChatAnswer(chunks=_chunk_data(chunks, run), headers=dict(run.headers))
    completion = await until_disconnected(request, collect_completion(run.deltas, identity, run.usage))
    if completion is None:
        return ChatAnswer(headers=dict(run.headers))
    return ChatAnswer(completion=json.loads(completion.model_dump_json()), headers=dict(run.headers))
