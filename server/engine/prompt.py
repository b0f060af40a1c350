"""Render a conversation into prompt tokens with the model's own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from server.engine.errors import InvalidPrompt


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: Literal["system", "user", "assistant"]
    content: str


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer prompt rendering needs."""

    chat_template: str | None

    def apply_chat_template(self, conversation: list[dict], **kwargs: object) -> str: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def render_prompt(tokenizer: ChatTokenizer, turns: Sequence[ChatTurn]) -> tuple[str, list[int]]:
    """The prompt text and its token ids, ready for the assistant's reply.

    The template adds the special tokens (BOS, role headers) itself, so the
    text is encoded without adding them a second time.
    """
    if not tokenizer.chat_template:
        raise InvalidPrompt("this model has no chat template")
    conversation = [{"role": turn.role, "content": turn.content} for turn in turns]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # templates raise their own errors (e.g. roles must alternate)
        raise InvalidPrompt(f"the conversation does not fit this model's chat template: {exc}") from exc
    return text, tokenizer.encode(text, add_special_tokens=False)
