"""`POST /v1/chat/completions`: wire format in, engine call, wire format out."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.adaption.runner import AdaptionService
from server.api.chat_stream import CompletionIdentity, collect_completion, on_first_choice_text, stream_chunks
from server.api.errors import invalid_request, read_json_object, status_of, to_api_error
from server.api.middleware import caller_of, principal_of, request_id_of
from server.api.moderations import checked_policy
from server.api.protocol import (
    GATEWAY_FIELDS,
    ChatCompletionRequest,
    ChatMessage,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    NightlyInfo,
    TemplateUse,
)
from server.config import GuardrailSettings, ModelEntry, Settings
from server.engine import (
    ChatTurn,
    CompletionDelta,
    Engine,
    GenerationOptions,
    JsonConstraint,
    PreparedChat,
    ToolCall,
    ToolSpec,
    ToolUse,
)
from server.engine.errors import EngineError
from server.engine.prompt import latest_user_text, with_system_block
from server.gateway.errors import GatewayError, ModelUnavailable
from server.gateway.routing import Route, candidates, first_that_serves
from server.gateway.service import Gateway, RequestAccount
from server.gateway.templates import expand
from server.gateway.transforms import MIDDLE_OUT, fit_context
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
    settings: Settings, engine: Engine, name: str, body: ChatCompletionRequest
) -> tuple[ModelEntry, str | None, str]:
    """(base model entry, adapter name or None, the param that named the adapter) for the model `name`."""
    if name in engine.adapters:  # vLLM's convention: the adapter's name as `model`
        if body.lora_name is not None and body.lora_name != name:
            raise invalid_request("`model` names one adapter and `lora_name` another.", param="lora_name")
        return settings.served, name, "model"
    entry = settings.find_model(name)
    if entry is None or entry.name != settings.served.name:
        raise ModelUnavailable(name)
    if body.adapter_is_target:
        # Adaption: run on the promoted version when asked and one exists, else on the base model.
        ready = body.adaption_inference and body.lora_name in engine.adapters
        return entry, body.lora_name if ready else None, "lora_name"
    return entry, body.lora_name, "lora_name"


def served_here(settings: Settings, engine: Engine, name: str) -> bool:
    entry = settings.find_model(name)
    return name in engine.adapters or (entry is not None and entry.name == settings.served.name)


def canonical_name(settings: Settings, engine: Engine, name: str) -> str:
    """What a key's allowed models name: an alias as its model, an adapter (as `model`) as the base model."""
    if name in engine.adapters:
        return settings.served.name
    entry = settings.find_model(name)
    return entry.name if entry is not None else name


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


async def error_events(deltas: AsyncIterator[str], settle: Callable[[int, str | None], None]) -> AsyncIterator[dict]:
    """SSE events for the chunks, `[DONE]` at the end, an error event if generation fails midway.

    A policy violation still ends with `[DONE]`: the stream was closed on purpose.
    `settle` gets the outcome once: 200, the error's status, or 499 when the client left.
    """
    outcome: tuple[int, str | None] = (499, "client_closed_request")
    try:
        async for data in deltas:
            yield {"data": data}
    except (EngineError, GatewayError) as exc:
        error = to_api_error(exc)
        outcome = (error.status, error.code)
        yield {"data": json.dumps(error.body())}
        return
    except GuardrailViolation as exc:
        error = to_api_error(exc)
        outcome = (error.status, error.code)
        yield {"data": json.dumps(error.body())}
        yield {"data": "[DONE]"}
    else:
        outcome = (200, None)
        yield {"data": "[DONE]"}
    finally:
        settle(*outcome)


async def metered(
    deltas: AsyncIterator[CompletionDelta], account: RequestAccount, prompt_tokens: int
) -> AsyncGenerator[CompletionDelta]:
    """`deltas` unchanged, counted into the request's usage (and choice 0's text kept as the response body)."""
    text: list[str] = []
    completion_tokens = 0
    async for delta in deltas:
        completion_tokens += delta.new_tokens
        account.completion_tokens = completion_tokens
        if delta.index == 0:
            text.append(delta.text)
        yield delta
    account.respond(prompt_tokens, completion_tokens, "".join(text))


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
    return await chat_completions_for(request, None)


async def chat_completions_for(request: Request, payload: dict | None) -> Response:
    """The chat pipeline for `payload` (None: the request's body), as other endpoints' translations call it."""
    gateway: Gateway = request.app.state.gateway
    account = gateway.open_account(request_id_of(request.scope), principal_of(request.scope))
    try:
        return await gateway_steps(request, gateway, account, payload)
    except Exception as exc:
        status, code = status_of(exc)
        gateway.settle(account, status, code)
        raise


async def gateway_steps(
    request: Request, gateway: Gateway, account: RequestAccount, payload: dict | None = None
) -> Response:
    """Template, model choice, permission, credits and rate limit, then the first route that serves."""
    settings: Settings = request.app.state.settings
    engine: Engine = request.app.state.engine
    principal = account.principal
    if payload is None:
        payload = await read_json_object(request)
    fallbacks = payload.get("models")
    if payload.get("model") is None and isinstance(fallbacks, list) and fallbacks:
        payload["model"] = fallbacks[0]  # OpenRouter's way: `models` alone names the first choice too
    template_use = TemplateUse.model_validate(payload, strict=True)
    if template_use.template is not None:
        template = await gateway.templates.find(template_use.template, principal.owner, admin=principal.admin)
        payload = expand(payload, template, template_use.variables or {})
    if payload.get("model") is None and principal.key is not None and principal.key.default_model is not None:
        payload["model"] = principal.key.default_model
    # Strict: JSON types must match (no "yes" for true, no "0.5" for 0.5), as OpenAI's API checks.
    body = ChatCompletionRequest.model_validate(payload, strict=True)
    if body.n > settings.max_n:
        raise invalid_request(f"n must be at most {settings.max_n} on this server.", param="n")
    body.guardrail_policy = checked_policy(body.guardrail_policy, settings.guardrails, "guardrail_policy")
    checked_stream_units(body, settings.guardrails)
    describe(account, gateway, body, payload)
    names = candidates(body.model, body.models)
    adapter = body.lora_name or (body.model if body.model in engine.adapters else None)
    gateway.authorize(principal, [canonical_name(settings, engine, name) for name in names], adapter)
    gateway.admit(principal)

    async def serve(name: str) -> Response:
        route = gateway.router.route(name, lambda model: served_here(settings, engine, model))
        if route.provider is None:
            return await serve_here(request, body, route, account)
        return await serve_upstream(gateway, body, payload, route, account)

    return await first_that_serves(names, serve)


def describe(account: RequestAccount, gateway: Gateway, body: ChatCompletionRequest, payload: dict) -> None:
    """What the usage record says about the request, and its body when logging is allowed."""
    account.session_id, account.user, account.tags = body.session_id, body.user, tuple(body.tag_list)
    account.signature, account.region = body.signature, body.region
    if gateway.log_bodies(body.log_query_body is not False):
        account.query_body = json.dumps(payload)
    account.log_response_body = gateway.log_bodies(body.log_response_body is not False)


async def serve_here(request: Request, body: ChatCompletionRequest, route: Route, account: RequestAccount) -> Response:
    settings: Settings = request.app.state.settings
    engine: Engine = request.app.state.engine
    memory: MemoryService = request.app.state.memory
    adaption: AdaptionService = request.app.state.adaption
    gateway: Gateway = request.app.state.gateway
    checker: Checker = request.app.state.checker

    entry, adapter, adapter_param = resolve_model(settings, engine, route.model, body)
    account.served_by(route, entry.name, adapter)
    turns = to_turns(body.messages)
    nightly = body.nightly
    caller = caller_of(request.scope)
    recalled = None
    if nightly is not None:
        query = latest_user_text(turns)
        recalled = await memory.recall(caller, nightly.memory_group, nightly.user_goal, query, engine.count_tokens)
        if recalled.block:
            turns = with_system_block(turns, recalled.block)
    options, tool_use = to_options(body), to_tool_use(body)

    def prepare(fitted: list[ChatTurn]) -> PreparedChat:
        return engine.prepare_chat(
            fitted, options, stream=body.stream, tool_use=tool_use, adapter=adapter, adapter_param=adapter_param
        )

    if MIDDLE_OUT in (body.transforms or ()):
        reserve = body.completion_token_limit or gateway.settings.middle_out_reserve_tokens
        prepared = fit_context(turns, prepare, engine.max_model_len - reserve, engine.count_tokens)
    else:
        prepared = prepare(turns)
    account.prompt_tokens = prepared.prompt_tokens

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
        function_call=body.answers_with_function_call,
    )
    headers = {MEMORIES_USED_HEADER: str(len(recalled.memories))} if recalled is not None else {}
    headers |= adaption_header(engine, body, adapter)
    deltas = metered(engine.generate(prepared, identity.id), account, prepared.prompt_tokens)
    if body.guardrail_policy is not None:
        deltas = with_guardrail(deltas, checker, body.guardrail_policy, body)
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
        events = error_events(chunks, lambda status, code: gateway.settle(account, status, code))
        return EventSourceResponse(events, sep="\n", ping=15, headers=headers)

    completion = await until_disconnected(request, collect_completion(deltas, identity))
    if completion is None:  # the client left; nobody reads this
        gateway.settle(account, 499, "client_closed_request")
        return Response(status_code=499)
    account.respond(completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.model_dump())
    gateway.settle(account, 200)
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)


def upstream_payload(payload: dict, route: Route, stream: bool) -> dict:
    """What the provider gets: the request's OpenAI and engine fields (unknown ones dropped), its own model name."""
    forwarded = {
        name: value
        for name, value in payload.items()
        if name in ChatCompletionRequest.model_fields and name not in GATEWAY_FIELDS
    }
    forwarded["model"] = route.model
    if stream:  # asked for always, to count the tokens; dropped on the way back unless the client asked too
        forwarded["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    return forwarded


async def relayed(
    chunks: AsyncIterator[dict], route: Route, account: RequestAccount, include_usage: bool
) -> AsyncIterator[str]:
    """The provider's chunks, reporting the route as the model, counted into the request's usage."""
    text: list[str] = []
    async for chunk in chunks:
        chunk["model"] = route.label
        usage = chunk.get("usage")
        if usage:
            account.prompt_tokens = usage.get("prompt_tokens", 0)
            account.completion_tokens = usage.get("completion_tokens", 0)
        for choice in chunk.get("choices") or ():
            if choice.get("index") == 0 and (choice.get("delta") or {}).get("content"):
                text.append(choice["delta"]["content"])
        if chunk.get("choices") or include_usage:
            if not include_usage:
                chunk.pop("usage", None)
            yield json.dumps(chunk)
    account.respond(account.prompt_tokens, account.completion_tokens, "".join(text))


async def serve_upstream(
    gateway: Gateway, body: ChatCompletionRequest, payload: dict, route: Route, account: RequestAccount
) -> Response:
    account.served_by(route, route.model)
    forwarded = upstream_payload(payload, route, body.stream)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = relayed(
            await gateway.router.stream(route, forwarded, account.request_id), route, account, include_usage
        )
        events = error_events(chunks, lambda status, code: gateway.settle(account, status, code))
        return EventSourceResponse(events, sep="\n", ping=15)
    completion = await gateway.router.complete(route, forwarded, account.request_id)
    completion["model"] = route.label
    usage = completion.get("usage") or {}
    account.respond(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), completion)
    gateway.settle(account, 200)
    return JSONResponse(completion)
