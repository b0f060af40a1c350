"""The wire side of `POST /v1/chat/completions`: the JSON body (templates filled in, defaults applied,
validated) into the serving pipeline's `ChatCall`."""

from __future__ import annotations

import json

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from server.api.errors import invalid_request
from server.api.moderations import checked_policy
from server.api.protocol import (
    EXTENSION_FIELDS,
    GATEWAY_FIELDS,
    ChatCompletionRequest,
    ChatMessage,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    TemplateUse,
)
from server.config import Settings
from server.engine import ChatTurn, GenerationOptions, JsonConstraint, ToolCall, ToolSpec, ToolUse
from server.gateway.keys import Principal
from server.gateway.service import RequestAccount
from server.gateway.templates import TemplateStore, expand
from server.gateway.transforms import MIDDLE_OUT
from server.serving.call import AdapterTarget, AdaptionTrigger, ChatCall, MemoryRequest, PolicyRequest

# What an upstream provider may be sent: OpenAI's (and vLLM's sampling) fields, not ours.
PROVIDER_FIELDS = frozenset(ChatCompletionRequest.model_fields) - GATEWAY_FIELDS - EXTENSION_FIELDS


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
        min_p=body.min_p,
        stop=body.stop_sequences,
        stop_token_ids=body.stop_token_ids or [],
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        min_tokens=body.min_tokens,
        ignore_eos=body.ignore_eos,
    )


async def read_chat_request(
    payload: dict, principal: Principal, templates: TemplateStore
) -> tuple[ChatCompletionRequest, dict]:
    """The request as validated, and its JSON after the template and the key's default model filled it in."""
    fallbacks = payload.get("models")
    if payload.get("model") is None and isinstance(fallbacks, list) and fallbacks:
        payload["model"] = fallbacks[0]  # OpenRouter's way: `models` alone names the first choice too
    template_use = TemplateUse.model_validate(payload, strict=True)
    if template_use.template is not None:
        template = await templates.find(template_use.template, principal.owner, admin=principal.admin)
        payload = expand(payload, template, template_use.variables or {})
    if payload.get("model") is None and principal.key is not None and principal.key.default_model is not None:
        payload["model"] = principal.key.default_model
    # Strict: JSON types must match (no "yes" for true, no "0.5" for 0.5), as OpenAI's API checks.
    return ChatCompletionRequest.model_validate(payload, strict=True), payload


def checked_limits(body: ChatCompletionRequest, settings: Settings) -> None:
    """This server's limits on `n`, the policy and the stream windows (400 naming the param)."""
    if body.n > settings.max_n:
        raise invalid_request(f"n must be at most {settings.max_n} on this server.", param="n")
    body.guardrail_policy = checked_policy(body.guardrail_policy, settings.guardrails, "guardrail_policy")
    limits = settings.guardrails
    for param, value, most in (
        ("chunk_size", body.chunk_size, limits.max_chunk_size),
        ("sliding_window", body.sliding_window, limits.max_sliding_window),
    ):
        if value > most:
            raise invalid_request(
                f"`{param}` must be at most {most} on this server.", param=param, code="invalid_value"
            )


def describe(account: RequestAccount, body: ChatCompletionRequest, payload: dict, log_bodies: bool) -> None:
    """What the usage record says about the request, and its body when logging is allowed."""
    account.session_id, account.user, account.tags = body.session_id, body.user, tuple(body.tag_list)
    account.signature, account.region = body.signature, body.region
    if log_bodies and body.log_query_body is not False:
        account.query_body = json.dumps(payload)
    account.log_response_body = log_bodies and body.log_response_body is not False


def to_call(body: ChatCompletionRequest, payload: dict, account: RequestAccount, caller: str) -> ChatCall:
    nightly = body.nightly
    return ChatCall(
        models=tuple(dict.fromkeys([body.model, *(body.models or ())])),
        turns=tuple(to_turns(body.messages)),
        options=to_options(body),
        account=account,
        caller=caller,
        stream=body.stream,
        tool_use=to_tool_use(body),
        memory=MemoryRequest(nightly.memory_group, nightly.user_goal) if nightly is not None else None,
        policy=PolicyRequest(body.guardrail_policy, body.chunk_size, body.sliding_window)
        if body.guardrail_policy is not None
        else None,
        adapter=AdapterTarget(body.lora_name, body.adapter_is_target, body.adaption_inference),
        adaption=AdaptionTrigger(body.lora_name, body.finetune_thresh, body.min_finetune_group)
        if body.finetune_thresh is not None and body.lora_name is not None
        else None,
        middle_out=MIDDLE_OUT in (body.transforms or ()),
        provider_body={name: value for name, value in payload.items() if name in PROVIDER_FIELDS},
        keep_alive=body.keep_alive,
    )
