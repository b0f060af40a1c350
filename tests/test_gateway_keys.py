"""API keys: admin endpoints and CLI, per-key models/adapters, default model, credits and rate limits."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import MODEL, RunningServer, assert_error, keyed_http, keys_cli, new_key

HELLO = [{"role": "user", "content": "Say hello."}]


def chat(session: httpx.Client, **fields: object) -> httpx.Response:
    return session.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 4, **fields})


def test_admin_creates_lists_gets_and_revokes_keys(server: RunningServer, http: httpx.Client) -> None:
    created = new_key(http, name="ci", credits=1000)
    secret = created["key"]
    assert secret.startswith("sk-") and secret.startswith(created["prefix"]) and len(secret) > 40
    listed = {key["id"]: key for key in http.get("/v1/keys").json()["data"]}
    assert created["id"] in listed and "key" not in listed[created["id"]] and secret not in json.dumps(listed)
    assert http.get(f"/v1/keys/{created['id']}").json()["credits"] == 1000
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0)
    assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2).choices
    revoked = http.delete(f"/v1/keys/{created['id']}").json()
    assert revoked["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)


def test_key_endpoints_refuse_bad_input_and_non_admins(server: RunningServer, http: httpx.Client) -> None:
    assert_error(http.post("/v1/keys", json={}), 400, "missing_required_parameter", "name")
    assert_error(http.post("/v1/keys", json={"name": "x", "credits": -1}), 400, "invalid_value", "credits")
    assert_error(
        http.post("/v1/keys", json={"name": "x", "requests_per_minute": "5"}),
        400,
        "invalid_value",
        "requests_per_minute",
    )
    assert_error(http.post("/v1/keys", json={"name": "x", "colour": "red"}), 400, "invalid_value", "colour")
    assert_error(http.get("/v1/keys/key-missing"), 404, "key_not_found", "key_id")
    assert_error(http.delete("/v1/keys/key-missing"), 404, "key_not_found", "key_id")
    plain = new_key(http, name="not-admin")
    with keyed_http(server, plain["key"]) as session:
        assert_error(session.get("/v1/keys"), 403, "admin_key_required", None)
        assert_error(
            session.post("/v1/keys", json={"name": "escalate", "admin": True}), 403, "admin_key_required", None
        )
    admin = new_key(http, name="db-admin", admin=True)
    with keyed_http(server, admin["key"]) as session:
        assert session.get("/v1/keys").status_code == 200


def test_cli_keys_reach_the_running_server(server: RunningServer, test_server_env: dict[str, str]) -> None:
    def cli(*args: str) -> str:
        return keys_cli(test_server_env, *args)

    created = json.loads(cli("create", "--name", "from-cli", "--credits", "500", "--rpm", "100"))
    assert created["credits"] == 500 and created["requests_per_minute"] == 100
    with keyed_http(server, created["key"]) as session:
        assert chat(session).status_code == 200
        assert any(json.loads(line)["id"] == created["id"] for line in cli("list").splitlines())
        cli("revoke", created["id"])
        assert_error(chat(session), 401, "invalid_api_key", None)


def test_allowed_models_and_adapters(server: RunningServer, http: httpx.Client) -> None:
    key = new_key(http, allowed_models=[MODEL], allowed_adapters=[])
    with keyed_http(server, key["key"]) as session:
        assert chat(session, model="smollm2").status_code == 200  # an alias of an allowed model
        assert_error(chat(session, model="llama-3.1-8b-instruct"), 403, "model_not_allowed", "model")
        assert_error(chat(session, lora_name="alpha"), 403, "model_not_allowed", "lora_name")
        assert_error(chat(session, models=["llama-3.1-8b-instruct"]), 403, "model_not_allowed", "model")


def test_default_model_serves_requests_without_one(server: RunningServer, http: httpx.Client) -> None:
    key = new_key(http, default_model="smollm2")
    with keyed_http(server, key["key"]) as session:
        response = session.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 3})
        assert response.status_code == 200 and response.json()["model"] == MODEL
    # Without a key default, a missing model is still OpenAI's 400.
    assert_error(
        http.post("/v1/chat/completions", json={"messages": HELLO}), 400, "missing_required_parameter", "model"
    )


def test_credits_are_debited_and_exhausted_credits_refuse_before_generating(
    server: RunningServer, http: httpx.Client
) -> None:
    # Enough for one request: credits are reserved before generating (prompt + max_tokens, ~37 here) and the
    # unused part refunded after, so the balance never goes below zero.
    key = new_key(http, credits=60)
    with keyed_http(server, key["key"]) as session:
        used = chat(session).json()["usage"]["total_tokens"]
        assert used > 0
        left = http.get(f"/v1/keys/{key['id']}").json()["credits"]
        assert left == 60 - used
        if left > 0:
            chat(session)
        refused = chat(session)
        assert_error(refused, 402, "insufficient_credits", None)
        usage = session.get(f"/v1/usage/requests/{refused.headers['x-request-id']}").json()["data"][0]
        assert usage["status"] == 402 and usage["prompt_tokens"] == usage["completion_tokens"] == 0


def test_requests_per_minute_limit_answers_429_with_retry_after(server: RunningServer, http: httpx.Client) -> None:
    key = new_key(http, requests_per_minute=2)
    with keyed_http(server, key["key"]) as session:
        assert chat(session).status_code == 200
        assert chat(session).status_code == 200
        limited = chat(session)
        assert_error(limited, 429, "rate_limit_exceeded", None)
        assert 1 <= int(limited.headers["retry-after"]) <= 60
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key["key"], max_retries=0)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)


def test_tokens_per_minute_limit(server: RunningServer, http: httpx.Client) -> None:
    key = new_key(http, tokens_per_minute=10)
    with keyed_http(server, key["key"]) as session:
        assert chat(session).status_code == 200  # uses more than 10 tokens
        assert_error(chat(session), 429, "rate_limit_exceeded", None)


def test_concurrent_requests_never_take_credits_below_zero(server: RunningServer, http: httpx.Client) -> None:
    """200 credits, 10 concurrent requests that may each use 60 tokens (33 prompt + 27 completion):
    credits are reserved before generating, so some are refused with 402 and the balance never goes negative."""
    key = new_key(http, credits=200)

    def one(_: int) -> httpx.Response:
        with keyed_http(server, key["key"]) as session:
            return chat(session, max_tokens=27)

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(one, range(10)))
    statuses = sorted(response.status_code for response in responses)
    assert 200 in statuses and 402 in statuses and set(statuses) == {200, 402}, statuses
    used = sum(response.json()["usage"]["total_tokens"] for response in responses if response.status_code == 200)
    left = http.get(f"/v1/keys/{key['id']}").json()["credits"]
    assert left == 200 - used >= 0
