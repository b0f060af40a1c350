"""OpenAI's Responses API as a pure translation over the chat pipeline.

`chat_payload` turns a Responses request (plus the stored conversation of its
`previous_response_id`) into a chat completions request body; `response_object`
turns the chat completion back into a Response; `ResponseEvents` turns streamed
chat chunks into the Responses stream's typed events. Nothing here runs a model
or touches HTTP: the endpoint passes the payload to the chat pipeline between them.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from server.conversations.metadata import checked_metadata
from server.errors import InvalidParam

# Responses fields this translation reads; any other field goes on to the chat pipeline as is, so the
# server's chat extensions (nightly, guardrail_policy, lora_name, session_id, ...) work here too.
RESPONSES_FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "previous_response_id",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "store",
        "metadata",
        "user",
        "truncation",
        "include",
        "background",
        "conversation",
        "reasoning",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "top_logprobs",
        "max_tool_calls",
    }
)
# Fields read and not honoured (none changes the answer's text): dropped, as the chat endpoint drops OpenAI
# fields it does not support, unless the request sets `drop_params: false`; then they are refused.
DROPPED = ("reasoning", "service_tier", "prompt_cache_key", "safety_identifier", "top_logprobs", "stream_options")
# Fields that would change the answer in ways this server cannot honour: refused, not ignored.
REFUSED = {
    "background": "Background responses are not supported by this server.",
    "conversation": "The Conversations API is not supported by this server; use `previous_response_id`.",
    "max_tool_calls": "`max_tool_calls` is not supported by this server.",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    name: str


class TextFormatText(BaseModel):
    type: Literal["text"]


class TextFormatJsonObject(BaseModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    schema_: dict = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


def _format_tag(value: object) -> str | None:
    """The member a `text.format` is, by its `type`, named so no wire name shows up in error paths."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return {"text": "TextFormatText", "json_object": "TextFormatJsonObject", "json_schema": "TextFormatJsonSchema"}.get(
        kind  # type: ignore[arg-type]
    )


TextFormat = Annotated[
    Annotated[TextFormatText, Tag("TextFormatText")]
    | Annotated[TextFormatJsonObject, Tag("TextFormatJsonObject")]
    | Annotated[TextFormatJsonSchema, Tag("TextFormatJsonSchema")],
    Discriminator(
        _format_tag,
        custom_error_type="invalid_value",
        custom_error_message="`type` must be one of 'text', 'json_object', 'json_schema'",
    ),
]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, min_length=1)
    input: str | list[dict] = Field(min_length=1)
    instructions: str | None = None
    previous_response_id: str | None = Field(None, min_length=1)
    tools: list[dict] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    metadata: dict[str, str] | None = None
    user: str | None = Field(None, max_length=256)
    truncation: Literal["disabled", "auto"] | None = None
    include: list[str] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ResponsesRequest:
        extra = self.model_extra or {}
        for name, reason in REFUSED.items():
            if extra.get(name) not in (None, False):
                raise InvalidParam(name, reason)
        dropped = sorted(name for name in DROPPED if extra.get(name) is not None)
        if extra.get("drop_params") is False and dropped:
            raise InvalidParam(", ".join(dropped), f"Unsupported parameters: {', '.join(dropped)}.")
        if self.include:
            raise InvalidParam("include", f"`include` values are not supported by this server: {self.include}.")
        try:
            checked_metadata(self.metadata)
        except ValueError as exc:
            raise InvalidParam("metadata", f"Invalid value for 'metadata': {exc}.") from None
        for index, tool in enumerate(self.tools or ()):
            if tool.get("type") != "function":
                raise InvalidParam(
                    f"tools[{index}].type",
                    f"Tool type {tool.get('type')!r} is not supported by this server; only 'function' tools are.",
                )
        if isinstance(self.tool_choice, FunctionChoice):
            names = {tool.get("name") for tool in self.tools or ()}
            if self.tool_choice.name not in names:
                raise InvalidParam(
                    "tool_choice", f"`tool_choice` names {self.tool_choice.name!r}, which is not in `tools`."
                )
        return self

    def function_tools(self) -> list[FunctionTool]:
        tools = []
        for index, tool in enumerate(self.tools or ()):
            try:
                tools.append(FunctionTool.model_validate(tool))
            except ValueError as exc:
                raise InvalidParam(f"tools[{index}]", f"Invalid function tool: {exc}") from None
        return tools


# --- request: Responses -> chat ---------------------------------------------------------------------------------


def _text_of(content: object, param: str) -> str:
    """A message's text: a string, or its input_text / output_text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParam(param, "`content` must be a string or a list of text parts.")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
            raise InvalidParam(
                f"{param}[{index}]", f"Content part type {kind!r} is not supported; only text parts are."
            )
        texts.append(part["text"])
    return "".join(texts)


def input_messages(items: str | list[dict]) -> list[dict]:
    """Responses input items as chat messages: messages, function calls (grouped per assistant turn), outputs."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict] = []
    for index, item in enumerate(items):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise InvalidParam(param, "Each input item must be an object.")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidParam(f"{param}.role", f"Unsupported role {role!r}.")
            messages.append({"role": role, "content": _text_of(item.get("content"), f"{param}.content")})
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise InvalidParam(f"{param}.{name}", f"A function_call item needs a string `{name}`.")
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("_open_calls"):
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
                last["tool_calls"] = [call]
                last["_open_calls"] = True
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call], "_open_calls": True})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidParam(f"{param}.call_id", "A function_call_output item needs a string `call_id`.")
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, f"{param}.output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        else:
            raise InvalidParam(f"{param}.type", f"Input item type {kind!r} is not supported by this server.")
    for message in messages:
        message.pop("_open_calls", None)
    return messages


def listed_input_items(items: str | list[dict]) -> list[dict]:
    """The request's input as OpenAI lists it back (`input_items`): typed items, each with an id and status."""
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    listed = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            text_type = "output_text" if item.get("role") == "assistant" else "input_text"
            parts = [{"type": text_type, "text": content}] if isinstance(content, str) else content
            listed.append(
                {
                    "id": item.get("id") or new_id("msg"),
                    "type": "message",
                    "role": item.get("role"),
                    "content": parts,
                    "status": "completed",
                }
            )
        else:
            prefix = "fc" if kind == "function_call" else "fco"
            listed.append({**item, "id": item.get("id") or new_id(prefix), "status": "completed"})
    return listed


def _response_format(text: TextConfig | None) -> dict | None:
    fmt = text.format if text is not None else None
    if fmt is None or isinstance(fmt, TextFormatText):
        return None
    if isinstance(fmt, TextFormatJsonObject):
        return {"type": "json_object"}
    spec = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.description is not None:
        spec["description"] = fmt.description
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


def chat_payload(body: ResponsesRequest, payload: dict, history: list[dict]) -> tuple[dict, list[dict]]:
    """(the chat completions body to run, the conversation to store: history and this input, no instructions)."""
    conversation = [*history, *input_messages(body.input)]
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + conversation
    chat: dict = {name: value for name, value in payload.items() if name not in RESPONSES_FIELDS}
    chat.update({"messages": messages, "stream": body.stream})
    if body.model is not None:
        chat["model"] = body.model
    if body.stream:
        chat["stream_options"] = {"include_usage": True}
    optional = {
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "parallel_tool_calls": body.parallel_tool_calls,
        "user": body.user,
        "response_format": _response_format(body.text),
    }
    chat.update({name: value for name, value in optional.items() if value is not None})
    if body.truncation == "auto":  # OpenAI drops input items from the middle of the conversation to fit it
        transforms = chat.get("transforms")
        chat["transforms"] = [*(transforms if isinstance(transforms, list) else []), "middle-out"]
    tools = body.function_tools()
    if tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    name: value
                    for name, value in (
                        ("name", tool.name),
                        ("description", tool.description),
                        ("parameters", tool.parameters),
                        ("strict", tool.strict),
                    )
                    if value is not None
                },
            }
            for tool in tools
        ]
    choice = body.tool_choice
    if choice is not None:
        chat["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if isinstance(choice, FunctionChoice) else choice
        )
    return chat, conversation


# --- response: chat -> Responses --------------------------------------------------------------------------------


@dataclass(slots=True)
class ResponseShell:
    """What a Response says about its request, fixed before any output."""

    id: str
    body: ResponsesRequest
    created_at: int = field(default_factory=lambda: int(time.time()))

    def object(self, status: str, model: str, output: list[dict], usage: dict | None, **more: object) -> dict:
        body = self.body
        fmt = body.text.format if body.text is not None and body.text.format is not None else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "store": body.store,
            "temperature": body.temperature,
            "text": {"format": fmt.model_dump(by_alias=True) if fmt is not None else {"type": "text"}},
            "tool_choice": body.tool_choice.model_dump()
            if isinstance(body.tool_choice, FunctionChoice)
            else body.tool_choice or "auto",
            "tools": [tool.model_dump(exclude_none=True) for tool in body.function_tools()],
            "top_p": body.top_p,
            "truncation": body.truncation or "disabled",
            "usage": usage,
            "user": body.user,
            "metadata": body.metadata or {},
            **more,
        }


def response_usage(usage: dict | None) -> dict | None:
    if not usage:
        return None
    return {
        "input_tokens": usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)},
        "output_tokens": usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)),
    }


INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def message_item(item_id: str, text: str, status: str) -> dict:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(item_id: str, call: dict, status: str = "completed") -> dict:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
        "status": status,
    }


def _finished(
    shell: ResponseShell, finish_reason: str | None, model: str, output: list[dict], usage: dict | None, nightly: object
) -> dict:
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    extra: dict = {"nightly": nightly} if nightly is not None else {}
    response = shell.object("incomplete" if reason else "completed", model, output, response_usage(usage), **extra)
    if reason:
        response["incomplete_details"] = {"reason": reason}
    return response


def response_object(shell: ResponseShell, completion: dict) -> tuple[dict, dict]:
    """(the Response for a chat completion, the assistant message to append to the stored conversation)."""
    choice = completion["choices"][0]
    message = choice["message"]
    reason = choice.get("finish_reason")
    status = "incomplete" if reason in INCOMPLETE_REASONS else "completed"
    output = []
    if message.get("content"):
        output.append(message_item(new_id("msg"), message["content"], status))
    output += [call_item(new_id("fc"), call) for call in message.get("tool_calls") or ()]
    response = _finished(
        shell, reason, completion.get("model", ""), output, completion.get("usage"), completion.get("nightly")
    )
    return response, assistant_turn(message.get("content"), message.get("tool_calls"))


def assistant_turn(content: str | None, tool_calls: list[dict] | None) -> dict:
    turn: dict = {"role": "assistant", "content": content or None}
    if tool_calls:
        turn["tool_calls"] = tool_calls
    elif turn["content"] is None:
        turn["content"] = ""
    return turn


# --- streaming: chat chunks -> Responses events -----------------------------------------------------------------


class ResponseEvents:
    """Turns one chat stream (choice 0) into the Responses stream's typed events, numbered in order."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self._sequence = 0
        self._output: list[dict] = []
        self._text_index: int | None = None  # output index of the open message item
        self._text: list[str] = []
        self._calls: dict[int, int] = {}  # chat tool-call index -> output index
        self._open_calls: list[int] = []
        self._tool_calls: list[dict] = []
        self.model = ""
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.nightly: object = None

    def _event(self, kind: str, **fields: object) -> dict:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self, model: str) -> list[dict]:
        self.model = model
        snapshot = self.shell.object("in_progress", model, [], None)
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _open_text(self) -> list[dict]:
        self._text_index = len(self._output)
        item = message_item(new_id("msg"), "", "in_progress")
        item["content"] = []
        self._output.append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", output_index=self._text_index, item=item),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self._text_index,
                content_index=0,
                part=part,
            ),
        ]

    def _close_text(self, status: str) -> list[dict]:
        if self._text_index is None:
            return []
        index, self._text_index = self._text_index, None
        item = self._output[index]
        text = "".join(self._text)
        done_item = message_item(item["id"], text, status)
        self._output[index] = done_item
        part = done_item["content"][0]
        return [
            self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self._event(
                "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
            ),
            self._event("response.output_item.done", output_index=index, item=done_item),
        ]

    def feed(self, chunk: dict) -> list[dict]:
        events: list[dict] = []
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("nightly") is not None:
            self.nightly = chunk["nightly"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self._text_index is None:
                    events += self._open_text()
                self._text.append(delta["content"])
                item_id = self._output[self._text_index]["id"]  # type: ignore[index]
                events.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=item_id,
                        output_index=self._text_index,
                        content_index=0,
                        delta=delta["content"],
                        logprobs=[],
                    )
                )
            for piece in delta.get("tool_calls") or ():
                events += self._call_piece(piece)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _call_piece(self, piece: dict) -> list[dict]:
        events: list[dict] = []
        chat_index = piece.get("index", 0)
        function = piece.get("function") or {}
        if chat_index not in self._calls:
            events += self._close_text("completed")
            call = {
                "id": piece.get("id") or new_id("call"),
                "type": "function",
                "function": {"name": function.get("name") or "", "arguments": ""},
            }
            self._tool_calls.append(call)
            index = len(self._output)
            self._calls[chat_index] = index
            self._open_calls.append(index)
            item = call_item(new_id("fc"), call, "in_progress")
            self._output.append(item)
            events.append(self._event("response.output_item.added", output_index=index, item=item))
        index = self._calls[chat_index]
        item = self._output[index]
        arguments = function.get("arguments") or ""
        if arguments:
            item["arguments"] += arguments
            self._tool_calls[list(self._calls).index(chat_index)]["function"]["arguments"] += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=arguments
                )
            )
        return events

    def finish(self) -> list[dict]:
        """The closing events, ending with `response.completed` (or `response.incomplete`)."""
        status = "incomplete" if self.finish_reason in INCOMPLETE_REASONS else "completed"
        events = self._close_text(status)
        for index in self._open_calls:
            item = self._output[index]
            item["status"] = "completed"
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
            events.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        self._open_calls = []
        response = self.final()
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return [*events, self._event(kind, response=response)]

    def failed(self, error: dict) -> list[dict]:
        response = self.shell.object("failed", self.model, self._output, response_usage(self.usage))
        response["error"] = {"code": error.get("code") or "server_error", "message": error.get("message", "")}
        return [self._event("response.failed", response=response)]

    def final(self) -> dict:
        return _finished(self.shell, self.finish_reason, self.model, self._output, self.usage, self.nightly)

    def assistant_turn(self) -> dict:
        return assistant_turn("".join(self._text) or None, self._tool_calls or None)


def sse(event: dict) -> dict:
    """An event as sse-starlette sends it: OpenAI names each event (`event:`) as well as typing its data."""
    return {"event": event["type"], "data": json.dumps(event)}
