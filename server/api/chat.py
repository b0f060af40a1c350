"""`POST /v1/chat/completions`: wire format in, engine call, wire format out."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from server.adaption.runner import AdaptionService
from server.api.chat_stream import CompletionIdentity, collect_completion, on_first_choice_text, stream_chunks
from server.api.errors import invalid_request, model_not_found, read_json_object, to_api_error
from server.api.middleware import caller_of, request_id_of
from server.api.moderations import checked_policy
from server.api.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    NightlyInfo,
)
from server.config import GuardrailSettings, ModelEntry, Settings
from server.engine import (
    ChatTurn,
    CompletionDelta,
    Engine,
    GenerationOptions,
    JsonConstraint,
    ToolCall,
    ToolSpec,
    ToolUse,
)
from server.engine.errors import EngineError
from server.engine.prompt import latest_user_text, with_system_block
from server.guardrails.checker import Checker
from server.guardrails.errors import GuardrailViolation
from server.guardrails.stream import checked_whole, guarded
from server.memory.service import MemoryService

T = TypeVar("T")


def to_turns(messages: list[ChatMessage]) -> list[ChatTurn]:
    return [
        ChatTurn(
            # OpenAI's newer `developer` role plays the part chat templates call `system`.
            role="system" if message.role == "developer" else message.role,
            content=message.text(),
            tool_calls=tuple(
                ToolCall(call.id, call.function.name, call.function.arguments) for call in message.tool_calls or ()
            ),
            tool_call_id=message.tool_call_id,
        )
        for message in messages
    ]


def to_tool_use(body: ChatCompletionRequest) -> ToolUse | None:
    if not body.tools:
        return None
    choice = body.tool_choice or "auto"
    return ToolUse(
        tools=tuple(
            ToolSpec(tool.function.name, tool.function.description, tool.function.parameters) for tool in body.tools
        ),
        mode="named" if isinstance(choice, NamedToolChoice) else choice,
        named=choice.function.name if isinstance(choice, NamedToolChoice) else None,
        parallel=body.parallel_tool_calls,
    )


def to_json_constraint(body: ChatCompletionRequest) -> JsonConstraint | None:
    response_format = body.response_format
    if isinstance(response_format, JsonObjectFormat):
        return JsonConstraint()
    if isinstance(response_format, JsonSchemaFormat):
        schema = response_format.json_schema.schema_ or {}
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise invalid_request(
                f"Invalid JSON schema in response_format: {exc.message}", param="response_format.json_schema.schema"
            ) from None
        return JsonConstraint(schema)
    return None


def to_options(body: ChatCompletionRequest) -> GenerationOptions:
    return GenerationOptions(
        n=body.n,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        logit_bias={int(token): bias for token, bias in (body.logit_bias or {}).items()},
        json=to_json_constraint(body),
        max_tokens=body.completion_token_limit,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=body.stop_sequences,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        min_tokens=body.min_tokens,
        ignore_eos=body.ignore_eos,
    )


def resolve_model(
    settings: Settings, engine: Engine, body: ChatCompletionRequest
) -> tuple[ModelEntry, str | None, str]:
    """(base model entry, adapter name or None, the param that named the adapter)."""
    if body.model in engine.adapters:  # vLLM's convention: the adapter's name as `model`
        if body.lora_name is not None and body.lora_name != body.model:
            raise invalid_request("`model` names one adapter and `lora_name` another.", param="lora_name")
        return settings.served, body.model, "model"
    entry = settings.find_model(body.model)
    if entry is None or entry.name != settings.served.name:
        raise model_not_found(body.model)
    if body.adapter_is_target:
        # Adaption: run on the promoted version when asked and one exists, else on the base model.
        ready = body.adaption_inference and body.lora_name in engine.adapters
        return entry, body.lora_name if ready else None, "lora_name"
    return entry, body.lora_name, "lora_name"


def adaption_header(engine: Engine, body: ChatCompletionRequest, adapter: str | None) -> dict[str, str]:
    """Which weights an `adaption_inference` request ran on (no version yet is not an error)."""
    if not body.adaption_inference:
        return {}
    if adapter is None:
        return {ADAPTION_HEADER: f"base-model; no promoted version of {body.lora_name} yet"}
    return {ADAPTION_HEADER: f"{adapter}@v{engine.adapters.get(adapter).version}"}


async def started(deltas: AsyncIterator[T]) -> AsyncIterator[T]:
    """`deltas` with its first item already produced (so its errors are raised here)."""
    first = await anext(deltas)

    async def replay() -> AsyncIterator[T]:
        yield first
        async for item in deltas:
            yield item

    return replay()


async def error_events(deltas: AsyncIterator[str]) -> AsyncIterator[dict]:
    """SSE events for the chunks and `[DONE]`; an error event if generation fails midway.

    A policy violation still ends with `[DONE]`: the stream was closed on purpose.
    """
    try:
        async for data in deltas:
            yield {"data": data}
    except EngineError as exc:
        yield {"data": json.dumps(to_api_error(exc).body())}
        return
    except GuardrailViolation as exc:
        yield {"data": json.dumps(to_api_error(exc).body())}
    yield {"data": "[DONE]"}


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
        if not task.done():
            task.cancel()
    return task.result() if not task.cancelled() else None


def checked_stream_units(body: ChatCompletionRequest, limits: GuardrailSettings) -> None:
    for param, value, most in (
        ("chunk_size", body.chunk_size, limits.max_chunk_size),
        ("sliding_window", body.sliding_window, limits.max_sliding_window),
    ):
        if value > most:
            raise invalid_request(
                f"`{param}` must be at most {most} on this server.", param=param, code="invalid_value"
            )


def with_guardrail(
    deltas: AsyncGenerator[CompletionDelta], checker: Checker, policy: str, body: ChatCompletionRequest
) -> AsyncIterator[CompletionDelta]:
    """Streams release output only after a check covers it; whole answers are checked before any is sent."""
    check = functools.partial(checker.check, policy)
    if body.stream:
        return guarded(deltas, check, body.chunk_size, body.sliding_window)
    return checked_whole(deltas, check)


MEMORIES_USED_HEADER = "x-nightly-memories-used"
ADAPTION_HEADER = "x-adaption-adapter"


async def chat_completions(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    engine: Engine = request.app.state.engine
    memory: MemoryService = request.app.state.memory
    adaption: AdaptionService = request.app.state.adaption
    checker: Checker = request.app.state.checker

    # Strict: JSON types must match (no "yes" for true, no "0.5" for 0.5), as OpenAI's API checks.
    body = ChatCompletionRequest.model_validate(await read_json_object(request), strict=True)
    if body.n > settings.max_n:
        raise invalid_request(f"n must be at most {settings.max_n} on this server.", param="n")
    policy = checked_policy(body.guardrail_policy, settings.guardrails, "guardrail_policy")
    checked_stream_units(body, settings.guardrails)
    entry, adapter, adapter_param = resolve_model(settings, engine, body)
    turns = to_turns(body.messages)
    nightly = body.nightly
    caller = caller_of(request.scope)
    recalled = None
    if nightly is not None:
        query = latest_user_text(turns)
        recalled = await memory.recall(caller, nightly.memory_group, nightly.user_goal, query, engine.count_tokens)
        if recalled.block:
            turns = with_system_block(turns, recalled.block)
    prepared = engine.prepare_chat(
        turns,
        to_options(body),
        stream=body.stream,
        tool_use=to_tool_use(body),
        adapter=adapter,
        adapter_param=adapter_param,
    )

    identity = CompletionIdentity(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        model=adapter or entry.name,
        system_fingerprint=settings.system_fingerprint,
        prompt_tokens=prepared.prompt_tokens,
        n=body.n,
        logprobs=body.logprobs,
        nightly=NightlyInfo(memory_group=nightly.memory_group, memories_used=len(recalled.memories))
        if nightly is not None and recalled is not None
        else None,
    )
    headers = {MEMORIES_USED_HEADER: str(len(recalled.memories))} if recalled is not None else {}
    headers |= adaption_header(engine, body, adapter)
    deltas = engine.generate(prepared, identity.id)
    if policy is not None:
        deltas = with_guardrail(deltas, checker, policy, body)
    if nightly is not None:
        # Remember the exchange once it is complete (not if the client left midway).
        def write_back(answer: str) -> None:
            threshold, lora_name, min_group = body.finetune_thresh, body.lora_name, body.min_finetune_group
            then = None
            if threshold is not None and lora_name is not None:

                async def then() -> None:  # counted once the exchange is stored, so the group size is current
                    await adaption.record_call(caller, nightly.memory_group, lora_name, threshold, min_group)

            memory.remember_later(
                caller, nightly.memory_group, nightly.user_goal, request_id_of(request.scope), query, answer, then
            )

        deltas = on_first_choice_text(deltas, write_back)
    if body.stream:
        # Wait for the first output before answering 200: a request the engine
        # refuses (or a dead engine) still gets a proper HTTP error.
        deltas = await started(deltas)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = stream_chunks(deltas, identity, include_usage=include_usage)
        return EventSourceResponse(error_events(chunks), sep="\n", ping=15, headers=headers)

    completion = await until_disconnected(request, collect_completion(deltas, identity))
    if completion is None:  # the client left; nobody reads this
        return Response(status_code=499)
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)
