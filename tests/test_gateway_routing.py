"""Routing: `model@provider` to a real second server of ours on loopback, `/v1/endpoints`, and fallbacks
(`models`) when the upstream is stopped, unreachable or the model unknown. The upstream runs with body
logging forced off (LLM_SERVER_LOG_BODIES=false)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import (
    IMPATIENT_PROVIDER,
    MODEL,
    UNREACHABLE_PROVIDER,
    UPSTREAM_API_KEY,
    UPSTREAM_PROVIDER,
    RunningServer,
    assert_error,
    keyed_http,
    server_env,
    start_server,
    wait_until,
)
from tests.test_guardrails import LEAK_MARKERS, POLICY, VIOLATING, pinned, sse_events

UPSTREAM = f"{MODEL}@{UPSTREAM_PROVIDER}"
UNREACHABLE = f"{MODEL}@{UNREACHABLE_PROVIDER}"
IMPATIENT = f"{MODEL}@{IMPATIENT_PROVIDER}"
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, upstream_port: int, server: RunningServer
) -> Iterator[RunningServer]:
    """A second server of ours, the provider `upstream` of the session server; stopped by the fallback tests."""
    env = server_env(
        LLM_SERVER_API_KEYS=UPSTREAM_API_KEY,
        LLM_SERVER_DATA_DIR=str(tmp_path_factory.mktemp("upstream-data")),
        LLM_SERVER_LOG_BODIES="false",
    )
    running = start_server(tmp_path_factory.mktemp("upstream") / "server.log", env=env, port=upstream_port)
    yield running
    running.stop()


def test_endpoints_list_model_provider_pairs(http: httpx.Client) -> None:
    ids = {item["id"] for item in http.get("/v1/endpoints").json()["data"]}
    assert {f"{MODEL}@local", "smollm2@local", UPSTREAM, UNREACHABLE} <= ids


def test_model_at_provider_is_proxied_and_reported(
    upstream: RunningServer, client: openai.OpenAI, http: httpx.Client
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=UPSTREAM, messages=HELLO, max_tokens=4, extra_body={"session_id": "routed", "tags": ["via-upstream"]}
    )
    completion = raw.parse()
    assert completion.model == UPSTREAM and completion.choices[0].message.content
    assert completion.usage.completion_tokens > 0
    request_id = raw.headers["x-request-id"]
    (ours,) = http.get(f"/v1/usage/requests/{request_id}").json()["data"]
    assert (ours["provider"], ours["model"], ours["session_id"]) == (UPSTREAM_PROVIDER, MODEL, "routed")
    assert ours["completion_tokens"] == completion.usage.completion_tokens and ours["query_body"]
    # The upstream saw the same request id, recorded it, and stored no bodies: its server forbids it.
    with keyed_http(upstream, UPSTREAM_API_KEY) as upstream_http:
        (theirs,) = upstream_http.get(f"/v1/usage/requests/{request_id}").json()["data"]
    assert theirs["status"] == 200 and theirs["query_body"] is None and theirs["response_body"] is None
    assert theirs["session_id"] is None  # gateway fields are not passed on


def test_upstream_cached_tokens_are_passed_on(upstream: RunningServer, client: openai.OpenAI) -> None:
    """The provider's usage.prompt_tokens_details.cached_tokens (its prefix cache) reaches our client."""
    system = f"Case {uuid.uuid4().hex}. " + " ".join(f"Rule {n}: answer briefly." for n in range(30))
    messages = [{"role": "system", "content": system}, *HELLO]
    first, again = (client.chat.completions.create(model=UPSTREAM, messages=messages, max_tokens=2) for _ in range(2))
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens > again.usage.prompt_tokens_details.cached_tokens >= 100


def test_streams_proxy_as_streams(upstream: RunningServer, client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=UPSTREAM, messages=HELLO, max_tokens=6, stream=True))
    assert {chunk.model for chunk in chunks} == {UPSTREAM}
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert all(chunk.usage is None for chunk in chunks)  # not asked for: the usage chunk we requested is dropped
    with_usage = list(
        client.chat.completions.create(
            model=UPSTREAM, messages=HELLO, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0


def test_upstream_errors_pass_through(upstream: RunningServer, http: httpx.Client) -> None:
    bad = {"model": UPSTREAM, "messages": HELLO, "logit_bias": {"999999999": 5}}
    assert_error(http.post("/v1/chat/completions", json=bad), 400, "invalid_value", "logit_bias")


GOAL = "Help me remember my own facts."
LOCKER_FACT = "My gym locker code is 4417."


def test_upstream_requests_get_memory_recall_and_write_back(upstream: RunningServer, http: httpx.Client) -> None:
    """`nightly` works the same for a routed model: recall into the provider's prompt, write-back after."""
    group = f"routed-{uuid.uuid4().hex[:8]}"
    added = http.post(f"/v1/memory/{group}/memories", json={"text": LOCKER_FACT, "user_goal": GOAL})
    assert added.status_code == 200, added.text
    ask = {
        "model": UPSTREAM,
        "messages": [{"role": "user", "content": "What is my gym locker code?"}],
        "max_tokens": 8,
        "temperature": 0.0,
    }
    plain = http.post("/v1/chat/completions", json=ask)
    recalled = http.post("/v1/chat/completions", json=ask | {"nightly": [group, GOAL]})
    assert plain.status_code == recalled.status_code == 200, recalled.text
    assert recalled.json()["model"] == UPSTREAM
    assert int(recalled.headers["x-nightly-memories-used"]) >= 1
    assert recalled.json()["nightly"] == {"memory_group": group, "memories_used": 1}
    # The provider read the memory block: its own count of the prompt grew by at least the fact.
    assert recalled.json()["usage"]["prompt_tokens"] >= plain.json()["usage"]["prompt_tokens"] + 8
    # The extension itself never reached the provider: it made no memory group of its own.
    with keyed_http(upstream, UPSTREAM_API_KEY) as upstream_http:
        assert_error(upstream_http.get(f"/v1/memory/{group}"), 404, "memory_group_not_found", "memory_group")
    # Write-back: the exchange joins the group here once the answer is complete.
    assert wait_until(lambda: http.get(f"/v1/memory/{group}").json()["memory_count"] > 1)


def test_streamed_upstream_answer_is_cut_by_a_policy(upstream: RunningServer, http: httpx.Client) -> None:
    """The provider writes a violating answer (pinned by structured output); our checker cuts the stream."""
    body = pinned(VIOLATING) | {"model": UPSTREAM, "guardrail_policy": POLICY, "chunk_size": 5, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        raw = response.read()
    assert not any(marker.encode() in raw for marker in LEAK_MARKERS), raw
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "guardrail_violation" and error["param"] == "guardrail_policy"
    last_chunk = json.loads(events[-3])
    assert last_chunk["model"] == UPSTREAM
    assert last_chunk["choices"] == [{"index": 0, "delta": {}, "finish_reason": "content_filter", "logprobs": None}]
    whole = http.post("/v1/chat/completions", json=body | {"stream": False})
    assert_error(whole, 400, "guardrail_violation", "guardrail_policy")
    assert not any(marker in whole.text for marker in LEAK_MARKERS)


def test_routing_bad_input(http: httpx.Client) -> None:
    chat = {"messages": HELLO, "max_tokens": 2}
    assert_error(
        http.post("/v1/chat/completions", json={**chat, "model": f"{MODEL}@mars"}), 404, "provider_not_found", "model"
    )
    assert_error(
        http.post("/v1/chat/completions", json={**chat, "model": "gpt-9@upstream"}), 404, "model_not_found", "model"
    )
    assert_error(http.post("/v1/chat/completions", json={**chat, "model": UNREACHABLE}), 502, "upstream_failed", None)
    assert_error(
        http.post("/v1/chat/completions", json={**chat, "model": MODEL, "models": "x"}), 400, "invalid_value", "models"
    )


def fallbacks_counted(http: httpx.Client) -> float:
    lines = http.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("llm_server_fallbacks_total{"))


def test_fallbacks_skip_unknown_and_unreachable_models(client: openai.OpenAI, http: httpx.Client) -> None:
    before = fallbacks_counted(http)
    completion = client.chat.completions.create(
        model="no-such-model", messages=HELLO, max_tokens=3, extra_body={"models": [UNREACHABLE, "smollm2"]}
    )
    assert completion.model == MODEL
    # `models` alone: its first entry is the first choice.
    response = http.post(
        "/v1/chat/completions", json={"models": [UNREACHABLE, MODEL], "messages": HELLO, "max_tokens": 2}
    )
    assert response.status_code == 200 and response.json()["model"] == MODEL
    # Each name passed over is counted: unknown and unreachable, then unreachable again.
    assert fallbacks_counted(http) - before == 3


def test_timeouts_are_504_and_fall_back(upstream: RunningServer, client: openai.OpenAI, http: httpx.Client) -> None:
    assert_error(
        http.post("/v1/chat/completions", json={"model": IMPATIENT, "messages": HELLO}), 504, "upstream_failed", None
    )
    completion = client.chat.completions.create(
        model=IMPATIENT, messages=HELLO, max_tokens=2, extra_body={"models": [UPSTREAM]}
    )
    assert completion.model == UPSTREAM


def test_fallback_when_the_upstream_is_stopped(
    upstream: RunningServer, client: openai.OpenAI, http: httpx.Client
) -> None:
    assert client.chat.completions.create(model=UPSTREAM, messages=HELLO, max_tokens=2).model == UPSTREAM
    upstream.stop()
    assert_error(
        http.post("/v1/chat/completions", json={"model": UPSTREAM, "messages": HELLO}), 502, "upstream_failed", None
    )
    completion = client.chat.completions.create(
        model=UPSTREAM, messages=HELLO, max_tokens=3, extra_body={"models": [MODEL]}
    )
    assert completion.model == MODEL and completion.choices[0].message.content
    stream = client.chat.completions.create(
        model=UPSTREAM, messages=HELLO, max_tokens=3, stream=True, extra_body={"models": [MODEL]}
    )
    assert {chunk.model for chunk in stream} == {MODEL}
