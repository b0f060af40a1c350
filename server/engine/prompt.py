"""Render a conversation into prompt tokens with the model's own chat template.

Templates that know about tools (Llama 3.1, Mistral v0.3) get the tools and the
tool-call history in their own terms. Templates that do not (the embedded
ChatML model) get the Hermes convention: tools described in the system prompt,
earlier calls and results written back as `<tool_call>` / `<tool_response>` text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from server.engine.errors import InvalidPrompt
from server.engine.tools import (
    ToolCall,
    ToolFormat,
    ToolSpec,
    ToolUse,
    hermes_system_prompt,
    hermes_tool_call_text,
    hermes_tool_response_text,
)


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


def with_context_block(turns: Sequence[ChatTurn], block: str) -> list[ChatTurn]:
    """`turns` with `block` (per-request context, e.g. recalled memories) put into the latest user turn,
    before the user's words; every turn before it, the system prompt first, stays byte for byte the same.

    What changes per request comes after the stable prefix (system prompt, template text, tools, earlier
    turns), so the engine's prefix cache still covers all of that. Inside the user turn rather than a
    turn of its own: every chat template accepts it (Mistral's rejects a second system turn).
    """
    if not block:
        return list(turns)
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "user":
            turn = turns[index]
            return [*turns[:index], ChatTurn("user", f"{block}\n\n{turn.content}"), *turns[index + 1 :]]
    return [*turns, ChatTurn("user", block)]


def latest_user_text(turns: Sequence[ChatTurn]) -> str:
    return next((turn.content for turn in reversed(turns) if turn.role == "user"), "")


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer prompt rendering needs."""

    chat_template: str | None

    def apply_chat_template(self, conversation: list[dict], **kwargs: object) -> str: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


# Put inside a special token's text found in a message, so the tokenizer reads it as plain text.
SPECIAL_TOKEN_BREAK = "\u200b"  # zero-width space


def special_token_strings(tokenizer: object) -> tuple[str, ...]:
    """The texts the tokenizer turns into special tokens (BOS/EOS, role headers, ...), longest first."""
    specials = set(getattr(tokenizer, "all_special_tokens", None) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials |= {token.content for token in decoder.values() if getattr(token, "special", False)}
    return tuple(sorted((text for text in specials if len(text) > 1), key=lambda text: (-len(text), text)))


def special_token_pattern(specials: Sequence[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(re.escape(text) for text in specials)) if specials else None


def defused(text: str, pattern: re.Pattern[str] | None) -> str:
    """`text` with every special token's text broken up (`<|im_end|>` -> `<\u200b|im_end|>`): tokenized as text.

    Only the chat template itself may produce special tokens; text from messages, templates and memories never."""
    if pattern is None or not text:
        return text
    return pattern.sub(lambda match: match[0][0] + SPECIAL_TOKEN_BREAK + match[0][1:], text)


def _defused_value(value: object, pattern: re.Pattern[str]) -> object:
    if isinstance(value, str):
        return defused(value, pattern)
    if isinstance(value, dict):
        return {defused(str(key), pattern): _defused_value(item, pattern) for key, item in value.items()}
    if isinstance(value, list):
        return [_defused_value(item, pattern) for item in value]
    return value


def defused_turns(turns: Sequence[ChatTurn], pattern: re.Pattern[str] | None) -> list[ChatTurn]:
    if pattern is None:
        return list(turns)
    return [
        replace(
            turn,
            content=defused(turn.content, pattern),
            tool_calls=tuple(replace(call, arguments=defused(call.arguments, pattern)) for call in turn.tool_calls),
        )
        for turn in turns
    ]


def defused_tool_use(tool_use: ToolUse | None, pattern: re.Pattern[str] | None) -> ToolUse | None:
    if tool_use is None or pattern is None:
        return tool_use
    tools = tuple(
        ToolSpec(
            tool.name,
            defused(tool.description, pattern) if tool.description else tool.description,
            _defused_value(tool.parameters, pattern) if tool.parameters is not None else None,  # type: ignore[arg-type]
        )
        for tool in tool_use.tools
    )
    return replace(tool_use, tools=tools)


def template_supports_tools(template: str) -> bool:
    return "tools" in template and "tool_calls" in template


def _native_turn(turn: ChatTurn, call_id: Callable[[str], str]) -> dict:
    message: dict = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": call_id(call.id),
                "type": "function",
                # templates serialise the arguments themselves (`| tojson`)
                "function": {"name": call.name, "arguments": json.loads(call.arguments or "{}")},
            }
            for call in turn.tool_calls
        ]
    if turn.tool_call_id is not None:
        message["tool_call_id"] = call_id(turn.tool_call_id)
    return message


def mistral_call_id(call_id: str) -> str:
    """Mistral's template insists on 9 alphanumerics; map other ids (e.g. OpenAI's) onto that, consistently."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def _hermes_turn(turn: ChatTurn) -> dict:
    if turn.role == "tool":
        return {"role": "tool", "content": hermes_tool_response_text(turn.content)}
    if turn.tool_calls:
        calls = "\n".join(hermes_tool_call_text(call.name, call.arguments) for call in turn.tool_calls)
        return {"role": turn.role, "content": f"{turn.content}\n{calls}".strip()}
    return {"role": turn.role, "content": turn.content}


def build_conversation(
    template: str, turns: Sequence[ChatTurn], tool_use: ToolUse | None, tool_format: ToolFormat = "hermes"
) -> tuple[list[dict], dict]:
    """The messages and extra template arguments for `apply_chat_template`."""
    offers_tools = tool_use is not None and tool_use.offers_tools
    if template_supports_tools(template):
        extra = {"tools": [tool.as_openai() for tool in tool_use.tools]} if offers_tools else {}
        call_id = mistral_call_id if tool_format == "mistral" else str
        return [_native_turn(turn, call_id) for turn in turns], extra
    conversation = [_hermes_turn(turn) for turn in turns]
    if offers_tools:
        tools_prompt = hermes_system_prompt(tool_use.tools)
        if conversation and conversation[0]["role"] == "system":
            conversation[0] = {"role": "system", "content": f"{conversation[0]['content']}\n\n{tools_prompt}"}
        else:
            conversation.insert(0, {"role": "system", "content": tools_prompt})
    return conversation, {}


def render_prompt(
    tokenizer: ChatTokenizer,
    turns: Sequence[ChatTurn],
    tool_use: ToolUse | None = None,
    tool_format: ToolFormat = "hermes",
    specials: re.Pattern[str] | None | bool = True,
) -> tuple[str, list[int]]:
    """The prompt text and its token ids, ready for the assistant's reply.

    The template adds the special tokens (BOS, role headers) itself, so the
    text is encoded without adding them a second time. Special tokens' texts in
    the turns and tools are defused first (`specials`: the pattern of
    `special_token_pattern`; True: found from the tokenizer).
    """
    if not tokenizer.chat_template:
        raise InvalidPrompt("this model has no chat template")
    pattern = special_token_pattern(special_token_strings(tokenizer)) if specials is True else specials or None
    turns, tool_use = defused_turns(turns, pattern), defused_tool_use(tool_use, pattern)
    conversation, extra = build_conversation(tokenizer.chat_template, turns, tool_use, tool_format)
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True, **extra)
    except Exception as exc:  # templates raise their own errors (e.g. roles must alternate)
        raise InvalidPrompt(f"the conversation does not fit this model's chat template: {exc}") from exc
    return text, tokenizer.encode(text, add_special_tokens=False)
