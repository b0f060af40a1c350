"""OpenAI Chat Completions wire types (request and response), as pydantic models.

Shaped after OpenAI's API reference and vLLM's `entrypoints/openai/protocol.py`.
Requests accept unknown extra fields and ignore them, as OpenAI-compatible
servers do (unless `drop_params` is false: then they are refused, listed);
known fields are range-checked so a bad value is a 400 naming it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

from server.config import parse_keep_alive
from server.conversations.metadata import checked_metadata
from server.engine.adapters import ADAPTER_NAME
from server.errors import InvalidParam

# Limits on one request (hostile input: each bounds work done before the engine's own checks).
MAX_MESSAGES = 20_000
MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 64 * 1024  # one tool's `parameters`, or a response_format schema, as JSON
MAX_LOGIT_BIAS = 300  # entries, as OpenAI allows
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64


def _bounded_schema(schema: dict | None) -> dict | None:
    if schema is not None and len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"a schema may be at most {MAX_SCHEMA_BYTES} bytes of JSON")
    return schema


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class DroppableRequest(BaseModel):
    """A request body whose unknown fields are dropped, as OpenAI-compatible servers do, unless it sets
    `drop_params: false`: then each is refused by name, so a client can tell it was not honoured."""

    model_config = ConfigDict(extra="allow")

    drop_params: bool | None = None  # None: true

    @model_validator(mode="after")
    def _unknown_fields_refused_when_asked(self) -> DroppableRequest:
        extra = self.model_extra or {}
        if self.drop_params is False and extra:
            names = sorted(extra)
            raise InvalidParam(
                ", ".join(names),
                f"Unsupported parameters: {', '.join(names)}. Leave them out, or let `drop_params` (default true) drop them.",
            )
        return self


class TextContentPart(_Wire):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def legacy_function_messages(messages: object) -> object:
    """The deprecated function-calling history in tool terms: an assistant's `function_call` becomes a tool
    call, a `function` message the tool result answering the latest call of that name."""
    if not isinstance(messages, list):
        return messages
    converted: list[object] = []
    call_ids: dict[str, str] = {}
    for position, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "assistant" and message.get("function_call"):
            call = message["function_call"]
            name = call.get("name") if isinstance(call, dict) else None
            call_id = f"call_fn_{position}"
            call_ids[str(name)] = call_id
            message = {k: v for k, v in message.items() if k != "function_call"}
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": call}]
        elif isinstance(message, dict) and message.get("role") == "function":
            name = message.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidParam(f"messages[{position}].name", "messages with role 'function' must have a 'name'")
            message = {**message, "role": "tool", "tool_call_id": call_ids.get(name, f"call_fn_{name}")}
        converted.append(message)
    return converted


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_fields_fit_role(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("messages with role 'tool' must have a 'tool_call_id'")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages may carry 'tool_calls'")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Wire):
    include_usage: bool = False


class FunctionDefinition(_Wire):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None

    _schema_size = field_validator("parameters")(_bounded_schema)


class ToolDefinition(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: ToolChoiceFunction


class TextFormat(_Wire):
    type: Literal["text"]


class JsonObjectFormat(_Wire):
    type: Literal["json_object"]


class JsonSchemaSpec(_Wire):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None

    _schema_size = field_validator("schema_")(_bounded_schema)


class JsonSchemaFormat(_Wire):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


def _format_tag(value: object) -> str | None:
    """The union member a `response_format` is, by its `type`, named so no wire name appears in error paths."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return {"text": "TextFormat", "json_object": "JsonObjectFormat", "json_schema": "JsonSchemaFormat"}.get(kind)


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("TextFormat")]
    | Annotated[JsonObjectFormat, Tag("JsonObjectFormat")]
    | Annotated[JsonSchemaFormat, Tag("JsonSchemaFormat")],
    Discriminator(
        _format_tag,
        custom_error_type="invalid_value",
        custom_error_message="`type` must be one of 'text', 'json_object', 'json_schema'",
    ),
]


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
TokenId = Annotated[int, Field(ge=0, lt=2**31)]

MEMORY_GROUP_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"
MEMORY_GROUP_MAX = 128
USER_GOAL_MAX = 2000


class Nightly(BaseModel):
    """The `nightly` extension, `[memory_group, user_goal]` on the wire."""

    memory_group: str
    user_goal: str


def parse_nightly(value: object) -> Nightly | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(item, str) for item in value):
        raise InvalidParam("nightly", "`nightly` must be a list of two strings: [memory_group, user_goal].")
    group, goal = (item.strip() for item in value)
    if not group or not goal:
        raise InvalidParam("nightly", "`nightly` needs a non-empty memory_group and a non-empty user_goal.")
    if len(group) > MEMORY_GROUP_MAX or not re.match(MEMORY_GROUP_PATTERN, group):
        raise InvalidParam(
            "nightly",
            f"`nightly` memory_group must be at most {MEMORY_GROUP_MAX} letters, digits or . _ : - (starting with a letter or digit).",
        )
    if len(goal) > USER_GOAL_MAX:
        raise InvalidParam("nightly", f"`nightly` user_goal must be at most {USER_GOAL_MAX} characters.")
    return Nightly(memory_group=group, user_goal=goal)


class NightlyInfo(BaseModel):
    """Reported back on completions that used memory."""

    memory_group: str
    memories_used: int


# OpenAI request fields this server cannot honour; silently ignoring them would
# change what the caller gets, so they are refused.
REFUSED_FIELDS = {
    "audio": "Audio output is not supported by this server's models.",
    "web_search_options": "Web search is not available on this server.",
}


MAX_FALLBACKS = 8
MAX_TAGS = 16
MAX_TAG_LENGTH = 64
# Fields only this server's gateway reads: not passed on to an upstream provider.
GATEWAY_FIELDS = frozenset(
    {
        "models",
        "transforms",
        "template",
        "variables",
        "session_id",
        "tags",
        "log_query_body",
        "log_response_body",
        "drop_params",
        "signature",
        "region",
        "use_custom_keys",
        "store",
    }
)


# This server's own extensions (seed 000 and vLLM's): read here, never passed on to an upstream provider.
EXTENSION_FIELDS = frozenset(
    {
        "lora_name",
        "nightly",
        "finetune_thresh",
        "min_finetune_group",
        "adaption_inference",
        "guardrail_policy",
        "chunk_size",
        "sliding_window",
    }
)


class TemplateUse(_Wire):
    """The template fields of a chat request, read before the rest: the template fills in the request."""

    template: str | None = Field(None, min_length=1)
    variables: dict[str, str] | None = None


class ChatCompletionRequest(DroppableRequest):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: int = Field(1, ge=1, le=128)
    user: str | None = Field(None, max_length=256)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # Deprecated function calling: mapped onto `tools` / `tool_choice`, answered with `message.function_call`.
    functions: list[FunctionDefinition] | None = Field(None, min_length=1, max_length=128)
    function_call: Literal["none", "auto"] | ToolChoiceFunction | None = None
    # Stored completions (GET /v1/chat/completions): kept when `store` is true, filtered by `metadata`.
    store: bool = False
    metadata: dict[str, str] | None = None
    # Extensions (../shared/seeds/000): the LoRA adapter to run on; vLLM's way is to name it as `model`.
    lora_name: str | None = Field(None, pattern=ADAPTER_NAME.pattern)
    # Extension (../shared/seeds/000): long-term memory, `[memory_group, user_goal]`.
    nightly: Nightly | None = None
    # Extensions (../shared/seeds/000): adaption, LoRA fine-tuning of `lora_name` from the memory group.
    finetune_thresh: int | None = Field(None, ge=1, le=1_000_000)
    min_finetune_group: int = Field(5, ge=1, le=1_000_000)
    adaption_inference: bool = False
    # Extensions (../shared/seeds/000): policies, an output guardrail checked by a local classifier;
    # streamed output is checked every `chunk_size` chunks over the latest `sliding_window` units.
    guardrail_policy: str | None = None
    chunk_size: int = Field(10, ge=1)
    sliding_window: int = Field(5, ge=1)
    # Extension (Ollama's): how long the model stays awake once idle, from this request on: seconds or a
    # duration ('5m'), negative for ever, 0 to put it to sleep when the request is done. Null: the model's own.
    keep_alive: float | str | None = None
    # vLLM's extensions, kept for clients (and benchmarks) written against `vllm serve`.
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    # Gateway extensions (seeds 001 and 002): routing, templates, usage reporting and logging.
    models: list[str] | None = Field(None, min_length=1, max_length=MAX_FALLBACKS)
    transforms: list[Literal["middle-out"]] | None = None
    template: str | None = Field(None, min_length=1)
    variables: dict[str, str] | None = None
    session_id: str | None = Field(None, min_length=1, max_length=256)
    tags: str | list[str] | None = Field(None, validate_default=True)
    log_query_body: bool | None = None  # None: true
    log_response_body: bool | None = None  # None: true
    signature: str | None = Field(None, max_length=256)
    region: str | None = Field(None, max_length=64)
    use_custom_keys: bool | None = None

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive_duration(cls, value: float | str | None) -> float | str | None:
        try:
            parse_keep_alive(value)
        except ValueError as exc:
            raise InvalidParam("keep_alive", str(exc)) from None
        return value

    @field_validator("tags")
    @classmethod
    def _tag_list(cls, tags: str | list[str] | None) -> list[str]:
        """Seed 001: a comma-separated string or a list; kept as a list of distinct non-empty tags."""
        items = tags.split(",") if isinstance(tags, str) else tags or []
        cleaned = list(dict.fromkeys(tag.strip() for tag in items if tag.strip()))
        if len(cleaned) > MAX_TAGS or any(len(tag) > MAX_TAG_LENGTH for tag in cleaned):
            raise ValueError(f"at most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters each")
        return cleaned

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> list[str]:
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else stop
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        if any(not item for item in stops):
            raise ValueError("stop sequences must be non-empty strings")
        if any(len(item) > MAX_STOP_CHARS for item in stops):
            raise ValueError(f"stop sequences may be at most {MAX_STOP_CHARS} characters long")
        return stops

    @field_validator("messages", mode="before")
    @classmethod
    def _legacy_function_messages(cls, messages: object) -> object:
        return legacy_function_messages(messages)

    @field_validator("metadata")
    @classmethod
    def _openai_metadata_limits(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        return checked_metadata(metadata)

    @field_validator("nightly", mode="before")
    @classmethod
    def _nightly_pair(cls, value: object) -> Nightly | None:
        return parse_nightly(value)

    @field_validator("logit_bias")
    @classmethod
    def _token_ids_and_bias_range(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias is not None and len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries are allowed, got {len(bias)}")
        for key, value in (bias or {}).items():
            if not (key.isascii() and key.isdigit()) or len(key) > 10:
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"bias values must be between -100 and 100, got {value} for token {key}")
        return bias

    @model_validator(mode="after")
    def _consistent_options(self) -> ChatCompletionRequest:
        extra = self.model_extra or {}
        for name, reason in REFUSED_FIELDS.items():
            if extra.get(name) is not None:
                raise InvalidParam(name, reason)
        if self.use_custom_keys:
            raise InvalidParam(
                "use_custom_keys",
                "This server has no per-key provider accounts: upstream providers are reached with the keys "
                "the server is configured with. Leave `use_custom_keys` out or false.",
            )
        modalities = extra.get("modalities")
        if isinstance(modalities, list) and any(modality != "text" for modality in modalities):
            raise InvalidParam("modalities", "Only the `text` modality is supported.")
        if self.adaption_inference and self.lora_name is None:
            raise InvalidParam("adaption_inference", "`adaption_inference` needs `lora_name`: the adapter to run on.")
        if self.finetune_thresh is not None and self.lora_name is None:
            raise InvalidParam("lora_name", "`finetune_thresh` needs `lora_name`: the adapter to train.")
        if self.finetune_thresh is not None and self.nightly is None:
            raise InvalidParam("finetune_thresh", "`finetune_thresh` needs `nightly`: the memory group to train from.")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParam("top_logprobs", "`logprobs` must be true when `top_logprobs` is set.")
        if self.stream_options is not None and not self.stream:
            raise InvalidParam("stream_options", "`stream_options` is only allowed when `stream` is true.")
        if self.functions is not None:
            self._use_functions_as_tools()
        elif self.function_call is not None:
            raise InvalidParam("function_call", "`function_call` is only allowed when `functions` are specified.")
        if self.tool_choice is not None and not self.tools:
            raise InvalidParam("tool_choice", "`tool_choice` is only allowed when `tools` are specified.")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {tool.function.name for tool in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise InvalidParam(
                    "tool_choice",
                    f"`tool_choice` names function {self.tool_choice.function.name!r}, which is not in `tools`.",
                )
        return self

    def _use_functions_as_tools(self) -> None:
        if self.tools is not None:
            raise InvalidParam("functions", "Send either `functions` (deprecated) or `tools`, not both.")
        self.tools = [ToolDefinition(type="function", function=function) for function in self.functions or ()]
        choice = self.function_call
        self.tool_choice = (
            NamedToolChoice(type="function", function=choice) if isinstance(choice, ToolChoiceFunction) else choice
        )
        self.parallel_tool_calls = False  # a message holds one `function_call`

    @property
    def answers_with_function_call(self) -> bool:
        """The request used the deprecated `functions`: its call comes back as `message.function_call`."""
        return self.functions is not None

    @property
    def adapter_is_target(self) -> bool:
        """`lora_name` names the adapter adaption trains or picks, not one the request must run on."""
        return self.adaption_inference or self.finetune_thresh is not None

    @property
    def tag_list(self) -> list[str]:
        return self.tags  # type: ignore[return-value]  # normalised by the validator

    @property
    def stop_sequences(self) -> list[str]:
        return self.stop  # type: ignore[return-value]  # normalised by the validator

    @property
    def completion_token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens served from vLLM's prefix cache (OpenAI: from its prompt cache)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # deprecated `functions` requests only

    @model_serializer(mode="wrap")
    def _omit_absent_tool_calls(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        for name in ("tool_calls", "function_call"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None = None


class _OmitsAbsentNightly(BaseModel):
    """Responses carry the `nightly` extension only when the request used memory."""

    @model_serializer(mode="wrap")
    def _omit_absent_nightly(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        if data.get("nightly") is None:
            data.pop("nightly", None)
        return data


class ChatCompletion(_OmitsAbsentNightly):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str
    nightly: NightlyInfo | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None}


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None}


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCallDelta | None = None  # deprecated `functions` requests only

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        # OpenAI leaves absent delta fields out (the finish chunk's delta is `{}`).
        return {key: value for key, value in handler(self).items() if value is not None}


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_OmitsAbsentNightly):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str
    usage: Usage | None = None
    nightly: NightlyInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llm-server"
    root: str
    parent: str | None = None
    max_model_len: int
    # Several models behind one server (like `ollama ps`): whether the model (or the adapter's base) is awake,
    # and its state: awake, loading, unloading, sleeping, unloaded.
    loaded: bool | None = None
    state: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModerationRequest(BaseModel):
    """OpenAI's `POST /v1/moderations`, plus `policy` (the natural-language rule to check against)."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str]
    model: str | None = None  # accepted for OpenAI clients; the configured checker answers
    policy: str | None = None  # extension: defaults to the server's `guardrails.moderation_policy`

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class ModerationResult(BaseModel):
    flagged: bool
    # OpenAI's per-category maps, with the one category this server checks: the policy.
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    # Extensions: the policy's score, a short reason, and the policy's kind (inferred from its words) whose
    # threshold judged it.
    score: float
    reason: str
    kind: str


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
