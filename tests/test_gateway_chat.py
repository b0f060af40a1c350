"""Chat-side gateway fields: drop_params, middle-out (and its absence), and the platform fields seed 001 lists."""

from __future__ import annotations

import httpx
import openai

from tests.conftest import MODEL, assert_error

MAX_MODEL_LEN = 2048  # models.yaml, the embedded model
LONG_TURN = "The lighthouse keeper wrote in the log every night about the weather and the ships. " * 20


def long_conversation() -> list[dict]:
    turns = [{"role": "user" if index % 2 == 0 else "assistant", "content": LONG_TURN} for index in range(16)]
    return [
        {"role": "system", "content": "Answer briefly."},
        *turns,
        {"role": "user", "content": "What did the keeper write about?"},
    ]


def test_unsupported_params_are_dropped_by_default_and_listed_with_drop_params_false(http: httpx.Client) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    extras = {"service_tier": "flex", "prediction": {"type": "content", "content": "x"}}
    assert http.post("/v1/chat/completions", json={**chat, **extras}).status_code == 200
    assert http.post("/v1/chat/completions", json={**chat, **extras, "drop_params": True}).status_code == 200
    error = assert_error(
        http.post("/v1/chat/completions", json={**chat, **extras, "drop_params": False}),
        400,
        "invalid_value",
        "prediction, service_tier",
    )
    assert "prediction" in error["message"] and "service_tier" in error["message"]
    # Fields this server supports are not "unsupported".
    supported = {
        **chat,
        "drop_params": False,
        "session_id": "s",
        "tags": "a,b",
        "signature": "sdk",
        "region": "eu",
        "use_custom_keys": False,
    }
    assert http.post("/v1/chat/completions", json=supported).status_code == 200


def test_overflow_is_400_without_middle_out(client: openai.OpenAI) -> None:
    try:
        client.chat.completions.create(model=MODEL, messages=long_conversation(), max_tokens=8)
    except openai.BadRequestError as exc:
        assert exc.code == "context_length_exceeded" and exc.param == "messages"
    else:
        raise AssertionError("an over-long conversation was accepted")


def test_middle_out_fits_the_conversation_and_usage_counts_what_was_sent(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=long_conversation(), max_tokens=8, extra_body={"transforms": ["middle-out"]}
    )
    assert completion.choices[0].message.content is not None
    assert 0 < completion.usage.prompt_tokens <= MAX_MODEL_LEN - 8
    # One long last message: its middle goes.
    huge = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": LONG_TURN * 8 + "What is 2+2?"}]
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=huge,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"transforms": ["middle-out"]},
    )
    usage = [chunk.usage for chunk in streamed if chunk.usage]
    assert usage and usage[0].prompt_tokens <= MAX_MODEL_LEN - 4


def test_transforms_bad_input(http: httpx.Client) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    assert_error(
        http.post("/v1/chat/completions", json={**chat, "transforms": ["squeeze"]}),
        400,
        "invalid_value",
        "transforms[0]",
    )
    assert_error(http.post("/v1/chat/completions", json={**chat, "models": []}), 400, "invalid_value", "models")
    assert_error(
        http.post("/v1/chat/completions", json={**chat, "drop_params": "no"}), 400, "invalid_value", "drop_params"
    )
