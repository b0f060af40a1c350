"""Every bad request gets an OpenAI-shaped error with the right status, code and param."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MODEL, assert_error

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"],
    ids=["broken", "empty", "array", "string", "not-utf8"],
)
def test_malformed_json_is_400(http: httpx.Client, raw: bytes) -> None:
    response = http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, "invalid_json", None)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": CAPITAL}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
        ),
        ({"model": MODEL, "messages": CAPITAL, "temperature": 2.5}, "temperature"),
        ({"model": MODEL, "messages": CAPITAL, "temperature": -0.1}, "temperature"),
        ({"model": MODEL, "messages": CAPITAL, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": CAPITAL, "temperature": "0.5"}, "temperature"),
        ({"model": MODEL, "messages": CAPITAL, "max_tokens": 5.5}, "max_tokens"),
        ({"model": MODEL, "messages": CAPITAL, "top_p": 0}, "top_p"),
        ({"model": MODEL, "messages": CAPITAL, "top_p": 1.5}, "top_p"),
        ({"model": MODEL, "messages": CAPITAL, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": CAPITAL, "max_tokens": -5}, "max_tokens"),
        ({"model": MODEL, "messages": CAPITAL, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"model": MODEL, "messages": CAPITAL, "presence_penalty": 2.5}, "presence_penalty"),
        ({"model": MODEL, "messages": CAPITAL, "frequency_penalty": -3}, "frequency_penalty"),
        ({"model": MODEL, "messages": CAPITAL, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": CAPITAL, "stop": [""]}, "stop"),
        ({"model": MODEL, "messages": CAPITAL, "stop": 7}, "stop"),
        ({"model": MODEL, "messages": CAPITAL, "seed": "abc"}, "seed"),
        ({"model": MODEL, "messages": CAPITAL, "stream": "yes"}, "stream"),
        ({"model": MODEL, "messages": CAPITAL, "user": "u" * 257}, "user"),
        ({"model": MODEL, "messages": CAPITAL, "n": 0}, "n"),
        ({"model": MODEL, "messages": CAPITAL, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_invalid_fields_are_400_naming_the_param(http: httpx.Client, body: dict, param: str) -> None:
    response = http.post("/v1/chat/completions", json=body)
    error = assert_error(response, 400, response.json()["error"]["code"], param)
    assert error["type"] == "invalid_request_error"
    assert param.split("[")[0] in error["message"]


def test_sdk_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=3)
    assert raised.value.param == "temperature"


@pytest.mark.parametrize("model", ["gpt-4o", "llama-3.1-8b-instruct", "../etc/passwd"])
def test_unknown_or_unserved_model_is_404(http: httpx.Client, model: str) -> None:
    response = http.post("/v1/chat/completions", json={"model": model, "messages": CAPITAL})
    error = assert_error(response, 404, "model_not_found", "model")
    assert model in error["message"]


def test_sdk_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=CAPITAL)


def test_prompt_plus_max_tokens_over_context_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": CAPITAL, "max_tokens": 2040})
    error = assert_error(response, 400, "context_length_exceeded", "messages")
    assert "2048" in error["message"]


def test_prompt_alone_over_context_is_400(http: httpx.Client) -> None:
    long_text = "word " * 2500
    for stream in (False, True):
        response = http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": long_text}], "stream": stream},
        )
        assert_error(response, 400, "context_length_exceeded", "messages")


def test_unknown_route_and_method_are_openai_shaped(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing-here"), 404, None, None)
    assert_error(http.put("/v1/chat/completions"), 405, None, None)  # GET lists stored completions


def test_server_still_serves_after_errors(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=8)
    assert "Paris" in completion.choices[0].message.content
