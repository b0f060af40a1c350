"""Usage: every request recorded (also failures and streams), aggregated by session, tag, user, model,
key and day, bodies logged unless the request opts out, tenants kept apart."""

from __future__ import annotations

import time
import uuid

import httpx
import openai

from tests.conftest import MODEL, RunningServer, assert_error, keyed_http, new_key

HELLO = [{"role": "user", "content": "Say hello."}]


def sdk(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def rows(session: httpx.Client, group_by: str, **params: object) -> list[dict]:
    response = session.get("/v1/usage", params={"group_by": group_by, **params})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_usage_groups_by_session_tag_user_model_key_and_day(server: RunningServer, http: httpx.Client) -> None:
    key = new_key(http, name="usage")
    client = sdk(server, key["key"])
    session_id = f"sess-{uuid.uuid4().hex[:8]}"
    for tags, user in ((["alpha", "beta"], "ann"), ("alpha", "bob")):
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=3, user=user, extra_body={"session_id": session_id, "tags": tags}
        )
    stream = client.chat.completions.create(
        model="smollm2", messages=HELLO, max_tokens=3, stream=True, extra_body={"session_id": session_id}
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    with keyed_http(server, key["key"]) as session:
        (by_session,) = [row for row in rows(session, "session_id") if row["session_id"] == session_id]
        assert by_session["requests"] == 3 and by_session["errors"] == 0
        assert by_session["completion_tokens"] > 0 and by_session["total_tokens"] > by_session["prompt_tokens"]
        by_tag = {row["tag"]: row["requests"] for row in rows(session, "tag")}
        assert by_tag["alpha"] == 2 and by_tag["beta"] == 1 and by_tag[None] == 1
        by_user = {row["user"]: row["requests"] for row in rows(session, "user")}
        assert by_user == {None: 1, "ann": 1, "bob": 1}
        assert [(row["model"], row["requests"]) for row in rows(session, "model")] == [(MODEL, 3)]
        assert [row["key"] for row in rows(session, "key")] == [key["id"]]
        assert [row["day"] for row in rows(session, "day")] == [time.strftime("%Y-%m-%d", time.gmtime())]
        assert rows(session, "session_id,tag")[0]["session_id"] == session_id
        assert rows(session, "", end=time.time() - 3600)[0]["requests"] == 0  # nothing an hour ago


def test_bodies_are_logged_unless_the_request_opts_out(
    server: RunningServer, client: openai.OpenAI, http: httpx.Client
) -> None:
    logged = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=3)
    quiet = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=3,
        extra_body={"log_query_body": False, "log_response_body": False, "signature": "python-sdk", "region": "eu"},
    )
    (record,) = http.get(f"/v1/usage/requests/{logged.headers['x-request-id']}").json()["data"]
    assert "Say hello." in record["query_body"] and logged.parse().choices[0].message.content in record["response_body"]
    assert record["status"] == 200 and record["latency_ms"] > 0 and record["model"] == MODEL
    (record,) = http.get(f"/v1/usage/requests/{quiet.headers['x-request-id']}").json()["data"]
    assert record["query_body"] is None and record["response_body"] is None
    assert (record["signature"], record["region"]) == ("python-sdk", "eu")


def test_failed_requests_are_recorded(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": "no-such-model", "messages": HELLO, "session_id": "failing"}
    )
    assert_error(response, 404, "model_not_found", "model")
    (record,) = http.get(f"/v1/usage/requests/{response.headers['x-request-id']}").json()["data"]
    assert record["status"] == 404 and record["error_code"] == "model_not_found" and record["session_id"] == "failing"


def test_keys_see_only_their_own_usage_and_admins_see_all(server: RunningServer, http: httpx.Client) -> None:
    mine, theirs = new_key(http, name="tenant-a"), new_key(http, name="tenant-b")
    tag = f"t-{uuid.uuid4().hex[:8]}"
    answer = sdk(server, mine["key"]).chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=2, extra_body={"tags": [tag]}
    )
    with keyed_http(server, theirs["key"]) as session:
        assert tag not in {row["tag"] for row in rows(session, "tag")}
        assert_error(
            session.get(f"/v1/usage/requests/{answer.headers['x-request-id']}"), 404, "request_not_found", "request_id"
        )
    with keyed_http(server, mine["key"]) as session:
        assert tag in {row["tag"] for row in rows(session, "tag")}
    assert {row["key"] for row in rows(http, "key")} >= {mine["id"]}  # the admin sees every key


def test_usage_bad_input(http: httpx.Client) -> None:
    assert_error(http.get("/v1/usage", params={"group_by": "colour"}), 400, None, "group_by")
    assert_error(http.get("/v1/usage", params={"group_by": "tag,tag"}), 400, None, "group_by")
    assert_error(http.get("/v1/usage", params={"start": "yesterday"}), 400, None, "start")
    assert_error(http.get("/v1/usage", params={"start": "-5"}), 400, None, "start")
    assert_error(http.get("/v1/usage", params={"start": "100", "end": "50"}), 400, None, "end")
    assert_error(http.get("/v1/usage/requests/req_nope"), 404, "request_not_found", "request_id")
    too_long = {"model": MODEL, "messages": HELLO, "user": "u" * 257}
    assert_error(http.post("/v1/chat/completions", json=too_long), 400, "invalid_value", "user")
    bad_tags = {"model": MODEL, "messages": HELLO, "tags": [1, 2]}
    assert_error(http.post("/v1/chat/completions", json=bad_tags), 400, "invalid_value", "tags")
