"""`POST /tokenize` and `POST /detokenize` in vLLM's shapes.

Tokenize takes a `prompt` (raw text) or `messages` (rendered with the model's
chat template, tools included, as the chat endpoint would) and answers
`{"count", "max_model_len", "tokens", "token_strs"}`; detokenize takes
`{"tokens"}` and answers `{"prompt"}`. They use the model without generating:
the key's model limits apply; they are free unless `metering.tokenize_per_token` prices them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.errors import read_json_object
from server.api.local_access import admit_local, local_model, metered, priced
from server.api.protocol import ChatMessage, DroppableRequest, InvalidParam, ToolDefinition
from server.config import Settings
from server.engine import ChatTurn, Engine, ToolCall, ToolSpec, ToolUse
from server.engine.pool import EnginePool
from server.gateway.service import Admission, Gateway


class TokenizeRequest(DroppableRequest):
    model: str | None = Field(None, min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    tools: list[ToolDefinition] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False
    lora_name: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidParam("prompt", "Send exactly one of `prompt` (text) or `messages` (a chat).")
        if self.messages is not None and not self.add_generation_prompt:
            raise InvalidParam("add_generation_prompt", "Only `add_generation_prompt: true` is supported.")
        if self.continue_final_message:
            raise InvalidParam("continue_final_message", "`continue_final_message` is not supported.")
        if self.messages is not None and self.add_special_tokens:
            raise InvalidParam("add_special_tokens", "Chat templates add their own special tokens.")
        return self


class DetokenizeRequest(DroppableRequest):
    model: str | None = Field(None, min_length=1)
    tokens: list[int]
    lora_name: str | None = None


def chat_turns(messages: list[ChatMessage]) -> list[ChatTurn]:
    return [
        ChatTurn(
            role="system" if message.role == "developer" else message.role,
            content=message.text(),
            tool_calls=tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()),
            tool_call_id=message.tool_call_id,
        )
        for message in messages
    ]


def _rate(request: Request) -> float:
    return request.app.state.settings.metering.tokenize_per_token


@asynccontextmanager
async def _model(
    request: Request, gateway: Gateway, admission: Admission, name: str | None, lora_name: str | None
) -> AsyncIterator[Engine]:
    """The named model's engine (its tokenizer), held awake meanwhile; the server's own model by default."""
    settings: Settings = request.app.state.settings
    pool: EnginePool = request.app.state.engines
    model = local_model(request.app.state.catalog, name or settings.served.name, lora_name)
    await admit_local(gateway, admission, model, generates=False)
    lease = await pool.lease(model.entry.name)
    try:
        yield lease.engine
    finally:
        lease.release()


async def tokenize(request: Request) -> Response:
    async def handle(gateway: Gateway, admission: Admission) -> Response:
        body = TokenizeRequest.model_validate(await read_json_object(request), strict=True)
        async with _model(request, gateway, admission, body.model, body.lora_name) as engine:
            return await _tokenized(request, admission, body, engine)

    return await metered(request, handle)


async def _tokenized(request: Request, admission: Admission, body: TokenizeRequest, engine: Engine) -> Response:
    if body.messages is not None:
        tools = tuple(
            ToolSpec(t.function.name, t.function.description, t.function.parameters) for t in body.tools or ()
        )
        _, tokens = engine.render_chat(chat_turns(body.messages), ToolUse(tools) if tools else None)
    else:
        tokens = engine.tokenize(body.prompt or "", add_special_tokens=body.add_special_tokens is not False)
    async with priced(request, admission, _rate(request), len(tokens), "tokenizing"):
        pass
    admission.settle(200)
    return JSONResponse(
        {
            "count": len(tokens),
            "max_model_len": engine.max_model_len,
            "tokens": tokens,
            "token_strs": [engine.detokenize([token]) for token in tokens] if body.return_token_strs else None,
        }
    )


async def detokenize(request: Request) -> Response:
    async def handle(gateway: Gateway, admission: Admission) -> Response:
        body = DetokenizeRequest.model_validate(await read_json_object(request), strict=True)
        async with (
            _model(request, gateway, admission, body.model, body.lora_name) as engine,
            priced(request, admission, _rate(request), len(body.tokens), "detokenizing"),
        ):
            prompt = engine.detokenize(body.tokens, "tokens")
        admission.settle(200)
        return JSONResponse({"prompt": prompt})

    return await metered(request, handle)
