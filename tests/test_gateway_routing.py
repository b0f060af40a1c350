"""Routing: `model@provider` to a real second server of ours on loopback, `/v1/endpoints`, and fallbacks
(`models`) when the upstream is stopped, unreachable or the model unknown. The upstream runs with body
logging forced off (LLM_SERVER_LOG_BODIES=false)."""

from __future__ import annotations

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
)

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


def test_fallbacks_skip_unknown_and_unreachable_models(client: openai.OpenAI, http: httpx.Client) -> None:
    completion = client.chat.completions.create(
        model="no-such-model", messages=HELLO, max_tokens=3, extra_body={"models": [UNREACHABLE, "smollm2"]}
    )
    assert completion.model == MODEL
    # `models` alone: its first entry is the first choice.
    response = http.post(
        "/v1/chat/completions", json={"models": [UNREACHABLE, MODEL], "messages": HELLO, "max_tokens": 2}
    )
    assert response.status_code == 200 and response.json()["model"] == MODEL


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
