"""Pure translation of engine deltas into OpenAI chat completion objects.

`stream_chunks` turns the engine's deltas into `chat.completion.chunk` JSON
strings (role first, content deltas, a finish chunk with an empty delta, the
optional usage chunk); `collect_completion` folds them into one
`chat.completion`. Neither touches HTTP or vLLM, so both are unit-tested directly.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from server.api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    Usage,
)
from server.engine import CompletionDelta


def finish_reason_of(engine_reason: str | None) -> FinishReason:
    """vLLM says stop/length (or abort/error, which only a cut-off request sees)."""
    return "length" if engine_reason == "length" else "stop"


@dataclass(slots=True)
class CompletionIdentity:
    id: str
    model: str
    system_fingerprint: str
    prompt_tokens: int
    created: int = field(default_factory=lambda: int(time.time()))


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


async def stream_chunks(
    deltas: AsyncIterator[CompletionDelta],
    identity: CompletionIdentity,
    *,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Serialized chunks, ending with the usage chunk when asked (not `[DONE]`)."""
    # OpenAI sends `"usage": null` on every chunk only when usage was asked for.
    exclude = None if include_usage else {"usage"}

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return ChatCompletionChunk(
            id=identity.id,
            created=identity.created,
            model=identity.model,
            system_fingerprint=identity.system_fingerprint,
            choices=choices,
            usage=usage,
        ).model_dump_json(exclude=exclude)

    yield chunk([ChunkChoice(index=0, delta=Delta(role="assistant", content=""))])
    completion_tokens = 0
    reason: str | None = None
    async for delta in deltas:
        completion_tokens += delta.new_tokens
        if delta.text:
            yield chunk([ChunkChoice(index=0, delta=Delta(content=delta.text))])
        reason = delta.finish_reason or reason
    yield chunk([ChunkChoice(index=0, delta=Delta(), finish_reason=finish_reason_of(reason))])
    if include_usage:
        yield chunk([], _usage(identity.prompt_tokens, completion_tokens))


async def collect_completion(deltas: AsyncIterator[CompletionDelta], identity: CompletionIdentity) -> ChatCompletion:
    parts: list[str] = []
    completion_tokens = 0
    reason: str | None = None
    async for delta in deltas:
        parts.append(delta.text)
        completion_tokens += delta.new_tokens
        reason = delta.finish_reason or reason
    return ChatCompletion(
        id=identity.id,
        created=identity.created,
        model=identity.model,
        system_fingerprint=identity.system_fingerprint,
        choices=[
            Choice(
                index=0,
                message=AssistantMessage(content="".join(parts)),
                finish_reason=finish_reason_of(reason),
            )
        ],
        usage=_usage(identity.prompt_tokens, completion_tokens),
    )
