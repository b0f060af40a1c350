"""POST /v1/chat/completions against the real server, through the official openai SDK and raw httpx."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import openai
import pytest

from tests.conftest import API_KEY, MODEL

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_plain_completion_answers(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=20)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    assert completion.system_fingerprint
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage.prompt_tokens > 10
    assert 0 < usage.completion_tokens <= 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_alias_resolves_to_canonical_name(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="smollm2", messages=CAPITAL, temperature=0, max_tokens=5)
    assert completion.model == MODEL


def test_streaming_through_sdk_matches_non_streaming(client: openai.OpenAI) -> None:
    expected = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=24)
    stream = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=24, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == expected.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == expected.choices[0].finish_reason
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])
    assert all(chunk.usage is None for chunk in chunks)


async def test_async_client_runs_concurrent_requests(async_client: openai.AsyncOpenAI) -> None:
    questions = ["What is the capital of France?", "What is 2 + 2?", "Name a colour.", "Say hello."]
    completions = await asyncio.gather(
        *(
            async_client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=16
            )
            for q in questions
        )
    )
    assert len({c.id for c in completions}) == len(questions)
    assert all(c.choices[0].message.content for c in completions)
    assert "Paris" in completions[0].choices[0].message.content


async def test_async_streaming(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=16, stream=True
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert "Paris" in text


def test_sse_wire_format(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": CAPITAL, "stream": True, "temperature": 0, "max_tokens": 12}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [block for block in raw.split("\n\n") if block.strip() and not block.startswith(":")]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(chunk["choices"][0]["delta"]) == {"content"} for chunk in chunks[1:-1])
    last = chunks[-1]["choices"][0]
    assert last["delta"] == {}
    assert last["finish_reason"] in ("stop", "length")
    assert "usage" not in chunks[0]


def test_stream_usage_chunk_when_asked(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,
        temperature=0,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == 8 or chunks[-2].choices[0].finish_reason == "stop"
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_usage_counts_prompt_tokens_served_from_the_prefix_cache(client: openai.OpenAI) -> None:
    """usage.prompt_tokens_details.cached_tokens (OpenAI's prompt caching): vLLM's prefix cache hits, per request."""
    # A system prompt no other test sends, long enough to fill several KV blocks (the prefix cache's unit).
    system = f"Case {uuid.uuid4().hex}. " + " ".join(f"Rule {n}: answer politely and briefly." for n in range(40))
    messages = [{"role": "system", "content": system}, *CAPITAL]
    first = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=4)
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # its first block already differs from all others
    again = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=4)
    assert first.usage.prompt_tokens > again.usage.prompt_tokens_details.cached_tokens >= 200
    streamed = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    usage = list(streamed)[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens_details.cached_tokens
    answered = client.responses.create(
        model=MODEL, instructions=system, input=CAPITAL[0]["content"], max_output_tokens=4, temperature=0
    )  # the same prompt through the Responses API: input_tokens_details.cached_tokens
    assert answered.usage.input_tokens_details.cached_tokens >= 200
    text = f"Case {uuid.uuid4().hex}. " + " ".join(f"Line {n} of a long document." for n in range(40))
    legacy = [client.completions.create(model=MODEL, prompt=text, max_tokens=2, temperature=0) for _ in range(2)]
    assert legacy[0].usage.prompt_tokens_details.cached_tokens == 0
    assert legacy[1].usage.prompt_tokens > legacy[1].usage.prompt_tokens_details.cached_tokens >= 200


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_tokens=5,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_completion_tokens=3,
    )
    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"


def test_stop_sequence_is_cut_from_output(client: openai.OpenAI) -> None:
    free = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=20)
    assert " is " in free.choices[0].message.content
    for stream in (False, True):
        response = client.chat.completions.create(
            model=MODEL, messages=CAPITAL, temperature=0, max_tokens=20, stop=[" is", "zzz"], stream=stream
        )
        if stream:
            chunks = list(response)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            text, reason = response.choices[0].message.content, response.choices[0].finish_reason
        assert text == free.choices[0].message.content.split(" is")[0]
        assert reason == "stop"


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    prompt = [{"role": "user", "content": "Invent a name for a pet robot."}]

    def sample(seed: int) -> str:
        completion = client.chat.completions.create(
            model=MODEL, messages=prompt, temperature=1.0, top_p=1.0, seed=seed, max_tokens=24
        )
        return completion.choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_penalties_and_sampling_fields_are_accepted(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,
        temperature=0.5,
        top_p=0.9,
        presence_penalty=1.5,
        frequency_penalty=-1.0,
        max_tokens=8,
        user="user-123",
    )
    assert completion.choices[0].message.content


def test_system_developer_and_multiturn_messages(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of Italy?"},
            {"role": "assistant", "content": "Rome."},
            {"role": "user", "content": [{"type": "text", "text": "And of "}, {"type": "text", "text": "France?"}]},
        ],
        temperature=0,
        max_tokens=16,
    )
    assert "Paris" in completion.choices[0].message.content


def test_unknown_fields_are_ignored(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": CAPITAL, "max_tokens": 4, "some_future_field": {"x": 1}, "metadata": {}},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]


def test_request_id_header(http: httpx.Client) -> None:
    generated = http.post("/v1/chat/completions", json={"model": MODEL, "messages": CAPITAL, "max_tokens": 2})
    assert generated.headers["x-request-id"].startswith("req_")
    echoed = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": CAPITAL, "max_tokens": 2},
        headers={"X-Request-Id": "my-trace-42"},
    )
    assert echoed.headers["x-request-id"] == "my-trace-42"
    for path in ("/v1/models", "/health", "/no/such/route"):
        assert http.get(path).headers["x-request-id"]
    streamed = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": CAPITAL, "max_tokens": 2, "stream": True},
        headers={"X-Request-Id": "stream-7"},
    )
    assert streamed.headers["x-request-id"] == "stream-7"
    unauthorised = httpx.get(f"{http.base_url}/v1/models", headers={"X-Request-Id": "anon-1"})
    assert unauthorised.status_code == 401
    assert unauthorised.headers["x-request-id"] == "anon-1"


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [model.id for model in models.data]
    assert ids[0] == MODEL
    assert "smollm2" in ids
    assert all(model.object == "model" and model.owned_by for model in models.data)


def test_health_and_metrics(server) -> None:
    health = httpx.get(f"{server.base_url}/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["model"] == MODEL
    metrics = httpx.get(f"{server.base_url}/metrics")
    assert metrics.status_code == 200
    assert "vllm:num_requests_running" in metrics.text


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic dGVzdA==", f"Bearer{API_KEY}"])
def test_bad_api_key_is_401(server, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": CAPITAL},
        headers=headers,
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "authentication_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_sdk_raises_authentication_error(server) -> None:
    wrong = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=CAPITAL)
