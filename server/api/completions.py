"""`POST /v1/completions`: OpenAI's legacy text completions on the served model (no chat template).

`prompt`: a string, a list of strings, a token array or a list of token arrays;
each prompt gets `n` choices (index `prompt * n + i`). Streaming, `n`, `logprobs`
(0-5, OpenAI's legacy object), `echo` (with `logprobs`: the prompt's tokens too, from vLLM's
`prompt_logprobs`, the first one's logprob null as OpenAI gives it), `stop`, penalties, `seed`, `logit_bias`
and vLLM's `top_k`, `min_p`, `min_tokens`, `ignore_eos`, `repetition_penalty`, `stop_token_ids` are
honoured; `suffix` (insertion) and `best_of` other than `n` are refused.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pydantic import Field, field_validator, model_validator
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.chat import until_disconnected
from server.api.errors import APIError, invalid_request, read_json_object
from server.api.local_access import LocalModel, admit_local, error_events, local_model, metered, started
from server.api.protocol import (
    ADAPTER_NAME,
    MAX_STOP_TOKEN_IDS,
    DroppableRequest,
    InvalidParam,
    Penalty,
    StreamOptions,
    TokenId,
)
from server.config import Settings
from server.engine import CompletionDelta, Engine, GenerationOptions
from server.engine.errors import ContextLengthExceeded
from server.engine.pool import EnginePool, Lease
from server.errors import CLIENT_CLOSED, CLIENT_CLOSED_CODE
from server.gateway.service import Admission, Gateway
from server.legacy.completions import echoed_prompt_logprobs, legacy_logprobs, merged

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


class CompletionRequest(DroppableRequest):
    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    best_of: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    stop: str | list[str] | None = Field(None, validate_default=True)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    lora_name: str | None = Field(None, pattern=ADAPTER_NAME.pattern)

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if len(stops) > 4 or any(not item for item in stops):
            raise ValueError("at most 4 non-empty stop sequences are allowed")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (bias or {}).items():
            if not key.isdigit() or not -100 <= value <= 100:
                raise ValueError(f"keys must be token ids and values between -100 and 100, got {key!r}: {value}")
        return bias

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.suffix:
            raise InvalidParam("suffix", "`suffix` (text insertion) is not supported by this server's models.")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidParam("best_of", "`best_of` other than `n` is not supported; ask for `n` choices instead.")
        if self.stream_options is not None and not self.stream:
            raise InvalidParam("stream_options", "`stream_options` is only allowed when `stream` is true.")
        return self

    @property
    def stop_sequences(self) -> list[str]:
        return self.stop  # type: ignore[return-value]  # normalised by the validator


@dataclass(slots=True)
class Prompt:
    text: str
    token_ids: list[int]
    first_token: str = ""  # the text of its first token (an echoed prompt's logprobs start with it)


def prompts_of(body: CompletionRequest, engine: Engine) -> list[Prompt]:
    value = body.prompt
    if isinstance(value, str):
        value = [value]
    if not value:
        raise invalid_request("`prompt` must not be empty.", param="prompt", code="invalid_value")
    if all(isinstance(item, int) for item in value):
        value = [value]  # type: ignore[list-item]
    prompts = []
    for index, item in enumerate(value):
        param = "prompt" if len(value) == 1 else f"prompt[{index}]"
        if isinstance(item, str):
            ids = engine.tokenize(item)
            if not ids:
                raise invalid_request(f"`{param}` is empty.", param=param, code="invalid_value")
            prompts.append(Prompt(item, ids, engine.detokenize(ids[:1])))
        else:
            if not item:
                raise invalid_request(f"`{param}` is an empty token array.", param=param, code="invalid_value")
            text = engine.detokenize(item, param)  # type: ignore[arg-type]
            prompts.append(Prompt(text, list(item), engine.detokenize(item[:1])))  # type: ignore[arg-type, index]
    return prompts


def options_of(body: CompletionRequest) -> GenerationOptions:
    return GenerationOptions(
        n=body.n,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        stop=body.stop_sequences,
        stop_token_ids=body.stop_token_ids or [],
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        min_tokens=body.min_tokens,
        ignore_eos=body.ignore_eos,
        logprobs=body.logprobs,
        prompt_logprobs=body.logprobs if body.echo else None,
        logit_bias={int(token): bias for token, bias in (body.logit_bias or {}).items()},
    )


@dataclass(slots=True)
class ChoiceState:
    text: list[str] = field(default_factory=list)
    logprobs: dict | None = None
    offset: int = 0
    finish_reason: str | None = None
    echoed: bool = False


@dataclass(slots=True)
class Run:
    """One completion request in flight: identity, prompts, per-choice state, token counts."""

    id: str
    model: str
    body: CompletionRequest
    prompts: list[Prompt]
    created: int = field(default_factory=lambda: int(time.time()))
    states: dict[int, ChoiceState] = field(default_factory=dict)
    completion_tokens: int = 0
    cached_tokens: dict[int, int] = field(default_factory=dict)  # per prompt: its tokens from the prefix cache

    @property
    def prompt_tokens(self) -> int:
        return sum(len(prompt.token_ids) for prompt in self.prompts)

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens.values())},
        }

    def choice_piece(self, position: int, delta: CompletionDelta) -> dict:
        """One delta of prompt `position` as a wire choice (its text, logprobs, finish reason), state updated."""
        index = position * self.body.n + delta.index
        state = self.states.setdefault(index, ChoiceState())
        self.completion_tokens += delta.new_tokens
        if delta.cached_tokens is not None:
            self.cached_tokens[position] = delta.cached_tokens
        text = delta.text
        echoed = None
        if self.body.echo and not state.echoed:
            state.echoed = True
            prompt = self.prompts[position]
            text = prompt.text + text
            state.offset = len(prompt.text)
            if self.body.logprobs is not None:
                echoed = echoed_prompt_logprobs(prompt.first_token, delta.prompt_logprobs or [])
        logprobs = None
        if self.body.logprobs is not None:
            logprobs, state.offset = legacy_logprobs(delta.logprobs or [], state.offset)
            if echoed is not None:
                logprobs = {key: echoed[key] + values for key, values in logprobs.items()}
            if state.logprobs is None:
                state.logprobs = {key: [] for key in logprobs}
            for key, values in logprobs.items():
                state.logprobs[key].extend(values)
        state.text.append(text)
        reason = delta.finish_reason
        if reason is not None:
            state.finish_reason = "length" if reason == "length" else "stop"
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": state.finish_reason}

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        data: dict = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}
        data["choices"] = choices
        if self.body.stream_options is not None and self.body.stream_options.include_usage:
            data["usage"] = usage
        return json.dumps(data)

    def completion(self) -> dict:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": index,
                    "text": "".join(state.text),
                    "logprobs": state.logprobs,
                    "finish_reason": state.finish_reason,
                }
                for index, state in sorted(self.states.items())
            ],
            "usage": self.usage(),
        }


async def create_completion(request: Request) -> Response:
    return await metered(request, lambda gateway, admission: _completion(request, gateway, admission))


async def _completion(request: Request, gateway: Gateway, admission: Admission) -> Response:
    account = admission.account
    settings: Settings = request.app.state.settings
    pool: EnginePool = request.app.state.engines
    payload = await read_json_object(request)
    if payload.get("model") is None and account.principal.key is not None:
        payload["model"] = account.principal.key.default_model
    body = CompletionRequest.model_validate(payload, strict=True)
    account.user = body.user
    if body.n > settings.max_n:
        raise invalid_request(f"n must be at most {settings.max_n} on this server.", param="n")
    model: LocalModel = local_model(request.app.state.catalog, body.model, body.lora_name)
    await admit_local(gateway, admission, model)
    lease = await pool.lease(model.entry.name)  # the model's engine, loaded or woken first; held until answered
    try:
        response = await _complete(request, admission, body, model, lease.engine, lease)
    except BaseException:
        lease.release()
        raise
    if not isinstance(response, EventSourceResponse):
        lease.release()
    return response


async def _complete(
    request: Request, admission: Admission, body: CompletionRequest, model: LocalModel, engine: Engine, lease: Lease
) -> Response:
    account = admission.account
    prompts = prompts_of(body, engine)
    options = options_of(body)
    try:
        prepared = [
            engine.prepare_prompt(
                prompt.token_ids, options, stream=body.stream, adapter=model.adapter, adapter_param=model.adapter_param
            )
            for prompt in prompts
        ]
    except ContextLengthExceeded as exc:
        raise APIError(400, str(exc), param="prompt", code="context_length_exceeded") from None
    run = Run(f"cmpl-{uuid.uuid4().hex}", model.public_name, body, prompts)
    account.prompt_tokens = run.prompt_tokens
    # credits held before generating: the most every prompt's choices may use
    await admission.reserve(
        sum(
            len(item.prompt_token_ids) + (item.sampling_params.max_tokens or 0) * item.sampling_params.n
            for item in prepared
        )
    )
    sources = [engine.generate(item, f"{run.id}-{position}") for position, item in enumerate(prepared)]
    pieces = merged(sources)

    if body.stream:

        async def chunks(first: AsyncIterator[tuple[int, CompletionDelta]]) -> AsyncIterator[str]:
            try:
                async for position, delta in first:
                    account.completion_tokens = run.completion_tokens
                    yield run.chunk([run.choice_piece(position, delta)])
                account.respond(run.prompt_tokens, run.completion_tokens, run.completion())
                if body.stream_options is not None and body.stream_options.include_usage:
                    yield run.chunk([], run.usage())
            finally:
                lease.release()

        first = await started(pieces)
        streamed = chunks(first)
        lease.release_with(streamed)  # a stream the client never read hands its model back too
        events = error_events(streamed, admission)
        return EventSourceResponse(events, sep="\n", ping=15)

    async def collect() -> dict:
        async for position, delta in pieces:
            run.choice_piece(position, delta)
        return run.completion()

    completion = await until_disconnected(request, collect())
    if completion is None:
        account.completion_tokens = run.completion_tokens
        admission.settle(CLIENT_CLOSED, CLIENT_CLOSED_CODE)
        return Response(status_code=499)
    account.respond(run.prompt_tokens, run.completion_tokens, completion)
    admission.settle(200)
    return JSONResponse(completion)
