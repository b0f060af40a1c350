"""The one boundary between the endpoints that translate to chat (Responses, stored completions) and the
chat pipeline: `run_chat(request, payload)` runs a chat completions payload through the whole pipeline
(gateway steps, templates, memory, guardrails, routing, usage) and hands back the answer as data.

Pointing these endpoints at another chat implementation means changing this module only.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sse_starlette import EventSourceResponse
from starlette.requests import Request

from server.api.chat import chat_completions_for

CLIENT_CLOSED = 499


class ChatStreamFailed(Exception):
    """A streamed chat ended with an error event (the engine failed, a guardrail closed it) midway."""

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


def _extension_headers(headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.startswith("x-") and name != "x-request-id"}


async def _chunk_data(events: AsyncIterator) -> AsyncIterator[dict]:
    try:
        async for event in events:
            data = event["data"] if isinstance(event, dict) else event
            if data == "[DONE]":
                return
            parsed = json.loads(data)
            if "error" in parsed and "choices" not in parsed:
                raise ChatStreamFailed(parsed["error"])
            yield parsed
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()  # settles the request's usage (499 when we stopped early)


async def run_chat(request: Request, payload: dict) -> ChatAnswer:
    """Run `payload` (a chat completions request body) through the chat pipeline."""
    response = await chat_completions_for(request, payload)
    headers = _extension_headers(response.headers)
    if isinstance(response, EventSourceResponse):
        return ChatAnswer(chunks=_chunk_data(response.body_iterator), headers=headers)
    if response.status_code == CLIENT_CLOSED:
        return ChatAnswer(headers=headers)
    return ChatAnswer(completion=json.loads(response.body), headers=headers)
