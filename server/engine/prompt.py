"""Render a conversation into prompt tokens with the model's own chat template.

Templates that know about tools (Llama 3.1, Mistral v0.3) get the tools and the
tool-call history in their own terms. Templates that do not (the embedded
ChatML model) get the Hermes convention: tools described in the system prompt,
earlier calls and results written back as `<tool_call>` / `<tool_response>` text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from server.engine.errors import InvalidPrompt
from server.engine.tools import (
    ToolCall,
    ToolFormat,
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
) -> tuple[str, list[int]]:
    """The prompt text and its token ids, ready for the assistant's reply.

    The template adds the special tokens (BOS, role headers) itself, so the
    text is encoded without adding them a second time.
    """
    if not tokenizer.chat_template:
        raise InvalidPrompt("this model has no chat template")
    conversation, extra = build_conversation(tokenizer.chat_template, turns, tool_use, tool_format)
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True, **extra)
    except Exception as exc:  # templates raise their own errors (e.g. roles must alternate)
        raise InvalidPrompt(f"the conversation does not fit this model's chat template: {exc}") from exc
    return text, tokenizer.encode(text, add_special_tokens=False)
