"""Chat template rendering with the embedded model's real tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from server.config import load_settings
from server.engine.errors import InvalidPrompt
from server.engine.prompt import ChatTurn, render_prompt


@pytest.fixture(scope="module")
def tokenizer():
    source = load_settings(environ={}).served.source_path
    if not source.is_dir():
        pytest.fail(f"{source} missing: run `make model` first")
    return AutoTokenizer.from_pretrained(source)


def test_renders_chatml_with_generation_prompt(tokenizer) -> None:
    text, ids = render_prompt(tokenizer, [ChatTurn("system", "Be brief."), ChatTurn("user", "Hi")])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_template_errors_become_invalid_prompt() -> None:
    class Failing:
        chat_template = "{{ raise_exception('roles must alternate') }}"

        def apply_chat_template(self, conversation, **kwargs):
            raise ValueError("roles must alternate")

    with pytest.raises(InvalidPrompt, match="roles must alternate"):
        render_prompt(Failing(), [ChatTurn("user", "hi")])


def test_model_without_template_is_invalid_prompt() -> None:
    class Bare:
        chat_template = None

    with pytest.raises(InvalidPrompt, match="no chat template"):
        render_prompt(Bare(), [ChatTurn("user", "hi")])
