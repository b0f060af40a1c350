"""Pure translation of engine deltas into OpenAI chat completion objects.

`stream_chunks` turns the engine's deltas into `chat.completion.chunk` JSON
strings: a role chunk per choice, content / tool-call / logprob deltas carrying
their choice's index, a finish chunk with an empty delta per choice, then the
optional usage chunk. `collect_completion` folds the same deltas into one
`chat.completion`. Neither touches HTTP or vLLM, so both are unit-tested directly.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from server.api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FinishReason,
    FunctionCall,
    FunctionCallDelta,
    NightlyInfo,
    PromptTokensDetails,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from server.engine import CompletionDelta, ToolCallChunk
from server.engine import TokenLogprob as EngineTokenLogprob


def finish_reason_of(engine_reason: str | None) -> FinishReason:
    """vLLM says stop/length, we add tool_calls and content_filter; abort/error only reach a cut-off request."""
    if engine_reason in ("length", "tool_calls", "content_filter"):
        return engine_reason  # type: ignore[return-value]
    return "stop"


@dataclass(slots=True)
class CompletionIdentity:
    id: str
    model: str
    system_fingerprint: str
    prompt_tokens: int
    n: int = 1
    logprobs: bool = False
    nightly: NightlyInfo | None = None
    function_call: bool = False  # answer a call as the deprecated `function_call`, not `tool_calls`
    created: int = field(default_factory=lambda: int(time.time()))


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )


def _wire_logprobs(entries: list[EngineTokenLogprob]) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            token=entry.token,
            logprob=entry.logprob,
            bytes=entry.bytes,
            top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in entry.top_logprobs],
        )
        for entry in entries
    ]


def _wire_tool_call_deltas(chunks: list[ToolCallChunk]) -> list[ToolCallDelta]:
    return [
        ToolCallDelta(
            index=chunk.index,
            id=chunk.id,
            type="function" if chunk.id else None,
            function=FunctionCallDelta(name=chunk.name, arguments=chunk.arguments),
        )
        for chunk in chunks
    ]


async def stream_chunks(
    deltas: AsyncIterator[CompletionDelta],
    identity: CompletionIdentity,
    *,
    include_usage: bool,
    usage: Callable[[], tuple[int, int, int]] | None = None,
) -> AsyncIterator[str]:
    """Serialized chunks, ending with the usage chunk when asked (not `[DONE]`).

    `usage`: the run's final (prompt, completion, cached prompt) tokens; by default the identity's prompt
    tokens and the deltas' own counts."""
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
            nightly=identity.nightly,
        ).model_dump_json(exclude=exclude)

    for index in range(identity.n):
        yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    completion_tokens = cached_tokens = 0
    async for delta in deltas:
        completion_tokens += delta.new_tokens
        cached_tokens = delta.cached_tokens if delta.cached_tokens is not None else cached_tokens
        if delta.text or delta.tool_calls or delta.logprobs:
            calls = _wire_tool_call_deltas(delta.tool_calls) if delta.tool_calls else None
            yield chunk(
                [
                    ChunkChoice(
                        index=delta.index,
                        delta=Delta(
                            content=delta.text or None,
                            tool_calls=None if identity.function_call else calls,
                            function_call=_legacy_call_delta(calls) if identity.function_call else None,
                        ),
                        logprobs=ChoiceLogprobs(content=_wire_logprobs(delta.logprobs)) if delta.logprobs else None,
                    )
                ]
            )
        if delta.finish_reason is not None:
            reason = _legacy_reason(finish_reason_of(delta.finish_reason), identity.function_call)
            yield chunk([ChunkChoice(index=delta.index, delta=Delta(), finish_reason=reason)])
    if include_usage:
        counted = (identity.prompt_tokens, completion_tokens, cached_tokens)
        yield chunk([], _usage(*(usage() if usage is not None else counted)))


def _legacy_call_delta(calls: list[ToolCallDelta] | None) -> FunctionCallDelta | None:
    """The first call's piece as a deprecated `function_call` delta (such requests make one call at most)."""
    first = next((call for call in calls or () if call.index == 0), None)
    return first.function if first is not None else None


def _legacy_reason(reason: FinishReason, function_call: bool) -> FinishReason:
    return "function_call" if function_call and reason == "tool_calls" else reason


def _message(state: _ChoiceState, function_call: bool) -> AssistantMessage:
    content = "".join(state.text) or (None if state.calls else "")
    if function_call:
        return AssistantMessage(content=content, function_call=state.calls[0].function if state.calls else None)
    return AssistantMessage(content=content, tool_calls=state.calls or None)


@dataclass(slots=True)
class _ChoiceState:
    text: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add_tool_chunk(self, piece: ToolCallChunk) -> None:
        if piece.index >= len(self.calls):
            self.calls.append(ToolCall(id=piece.id or "", function=FunctionCall(name=piece.name or "", arguments="")))
        self.calls[piece.index].function.arguments += piece.arguments


async def collect_completion(
    deltas: AsyncIterator[CompletionDelta],
    identity: CompletionIdentity,
    usage: Callable[[], tuple[int, int, int]] | None = None,
) -> ChatCompletion:
    states = [_ChoiceState() for _ in range(identity.n)]
    completion_tokens = cached_tokens = 0
    async for delta in deltas:
        state = states[delta.index]
        completion_tokens += delta.new_tokens
        cached_tokens = delta.cached_tokens if delta.cached_tokens is not None else cached_tokens
        state.text.append(delta.text)
        for piece in delta.tool_calls:
            state.add_tool_chunk(piece)
        if delta.logprobs:
            state.logprobs.extend(_wire_logprobs(delta.logprobs))
        state.finish_reason = delta.finish_reason or state.finish_reason
    return ChatCompletion(
        id=identity.id,
        created=identity.created,
        model=identity.model,
        system_fingerprint=identity.system_fingerprint,
        choices=[
            Choice(
                index=index,
                message=_message(state, identity.function_call),
                finish_reason=_legacy_reason(finish_reason_of(state.finish_reason), identity.function_call),
                logprobs=ChoiceLogprobs(content=state.logprobs) if identity.logprobs else None,
            )
            for index, state in enumerate(states)
        ],
        usage=_usage(*(usage() if usage is not None else (identity.prompt_tokens, completion_tokens, cached_tokens))),
        nightly=identity.nightly,
    )
