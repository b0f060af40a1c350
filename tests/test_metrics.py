"""`/metrics` scraped after real requests: our `llm_server_*` metrics beside vLLM's, key ids never secrets;
plus the endpoints added for the console (`GET /v1/memory`, usage by hour). Fine-tuning's metrics are read in
tests/test_adaption.py, around the one job that module trains."""

from __future__ import annotations

import time
import uuid

import httpx
import openai

from tests.conftest import API_KEY, MODEL, OTHER_API_KEY, RunningServer, assert_error, new_key, wait_until
from tests.prometheus import matching, scrape, value


def test_requests_tokens_and_guardrail_checks_are_counted(
    server: RunningServer, client: openai.OpenAI, http: httpx.Client
) -> None:
    _, before = scrape(server.base_url)
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    moderation = http.post("/v1/moderations", json={"input": ["a kind word", "another"], "policy": "No insults."})
    assert moderation.status_code == 200, moderation.text
    unauthenticated = httpx.get(f"{server.base_url}/v1/models", timeout=30)
    assert unauthenticated.status_code == 401
    assert http.get(f"/v1/memory/no-such-group-{uuid.uuid4().hex[:8]}").status_code == 404
    text, after = scrape(server.base_url)

    def grew(name: str, **labels: str) -> float:
        return matching(after, name, **labels) - matching(before, name, **labels)

    chat = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert grew("llm_server_http_requests_total", **chat) == 1
    assert grew("llm_server_http_request_duration_seconds_count", route="/v1/chat/completions") == 1
    assert grew("llm_server_http_requests_total", route="/v1/models", status="401") == 1
    # The route template, never the raw path (a bounded label set).
    assert grew("llm_server_http_requests_total", route="/v1/memory/{memory_group}", status="404") == 1
    assert "no-such-group" not in text
    assert grew("llm_server_model_requests_total", model=MODEL, provider="local", status="200") == 1
    usage = completion.usage
    assert grew("llm_server_tokens_total", direction="in", model=MODEL, key_id="static") == usage.prompt_tokens
    assert grew("llm_server_tokens_total", direction="out", model=MODEL, key_id="static") == usage.completion_tokens
    verdicts = moderation.json()["results"]
    assert grew("llm_server_guardrail_checks_total") == len(verdicts)
    assert grew("llm_server_guardrail_checks_total", verdict="violation") == sum(v["flagged"] for v in verdicts)
    assert grew("llm_server_guardrail_check_duration_seconds_count") == 1  # one call, a batch of two
    # vLLM's engine metrics are still there, beside ours.
    assert any(name.startswith("vllm:") for name, _ in after)
    # State read at scrape time: every job state, and the adapters served.
    for state in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert ("llm_server_fine_tuning_jobs", frozenset({("state", state)})) in after
    assert value(after, "llm_server_adapters_loaded") == len(http.get("/v1/adapters").json()["data"])
    assert API_KEY not in text and OTHER_API_KEY not in text


def test_refusals_and_credits_are_counted_by_key_id_never_the_secret(server: RunningServer, http: httpx.Client) -> None:
    paying = new_key(http, name="metrics-paying", credits=100_000, requests_per_minute=1)
    broke = new_key(http, name="metrics-broke", credits=0)
    _, before = scrape(server.base_url)
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {paying['key']}"}) as session:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        first = session.post("/v1/chat/completions", json=body, timeout=120)
        assert first.status_code == 200, first.text
        assert session.post("/v1/chat/completions", json=body, timeout=120).status_code == 429
    refused = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
        headers={"Authorization": f"Bearer {broke['key']}"},
        timeout=120,
    )
    assert refused.status_code == 402
    text, after = scrape(server.base_url)
    spent = first.json()["usage"]["total_tokens"]
    assert value(after, "llm_server_credits_spent_total", key_id=paying["id"]) == spent
    rate_limited = {"reason": "rate_limit", "key_id": paying["id"]}
    assert (
        value(after, "llm_server_refusals_total", **rate_limited)
        - value(before, "llm_server_refusals_total", **rate_limited)
        == 1
    )
    assert value(after, "llm_server_refusals_total", reason="credits", key_id=broke["id"]) == 1
    assert paying["key"] not in text and broke["key"] not in text


def test_memory_recall_write_back_and_notes_are_counted(server: RunningServer, http: httpx.Client) -> None:
    group = f"metrics-{uuid.uuid4().hex[:8]}"
    _, before = scrape(server.base_url)
    added = http.post(f"/v1/memory/{group}/memories", json={"text": ["I keep bees.", "My bees make clover honey."]})
    assert added.status_code == 200, added.text
    answer = http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "What do my bees make?"}],
            "max_tokens": 8,
            "nightly": [group, "A beekeeping helper"],
        },
    )
    assert answer.status_code == 200, answer.text
    used = int(answer.headers["x-nightly-memories-used"])

    def grew(name: str, **labels: str) -> float:
        return matching(scrape(server.base_url)[1], name, **labels) - matching(before, name, **labels)

    assert grew("llm_server_memories_written_total", kind="note") == 2
    assert grew("llm_server_memory_recall_duration_seconds_count") == 1
    assert grew("llm_server_memory_recall_memories_used_sum") == used >= 1
    assert wait_until(lambda: grew("llm_server_memory_writebacks_total", outcome="ok") == 1, timeout_s=60)
    assert grew("llm_server_memories_written_total", kind="turn") >= 1


def test_memory_groups_are_listed_for_their_owner_only(http: httpx.Client, other_http: httpx.Client) -> None:
    mine = f"list-mine-{uuid.uuid4().hex[:8]}"
    theirs = f"list-theirs-{uuid.uuid4().hex[:8]}"
    assert http.post(f"/v1/memory/{mine}/memories", json={"text": "I like tea."}).status_code == 200
    assert other_http.post(f"/v1/memory/{theirs}/memories", json={"text": "I like coffee."}).status_code == 200
    listed = http.get("/v1/memory")
    assert listed.status_code == 200
    body = listed.json()
    assert body["object"] == "list"
    names = [group["id"] for group in body["data"]]
    assert mine in names and theirs not in names
    assert names == sorted(names)
    group = next(group for group in body["data"] if group["id"] == mine)
    assert group["object"] == "memory_group" and group["memory_count"] == 1
    other_names = [group["id"] for group in other_http.get("/v1/memory").json()["data"]]
    assert theirs in other_names and mine not in other_names
    # Bad input: the list takes no body and no other method.
    assert_error(http.post("/v1/memory", json={}), 405, None, None)
    assert_error(httpx.get(f"{http.base_url}/v1/memory", timeout=30), 401, "invalid_api_key", None)


def test_usage_groups_by_hour(http: httpx.Client) -> None:
    tag = f"hourly-{uuid.uuid4().hex[:8]}"
    started = time.time()
    reply = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "tags": [tag]},
    )
    assert reply.status_code == 200, reply.text
    hours = {time.strftime("%Y-%m-%dT%H:00", time.gmtime(at)) for at in (started, time.time())}
    rows = http.get("/v1/usage", params={"group_by": "hour,tag", "start": started - 1}).json()["data"]
    row = next(row for row in rows if row["tag"] == tag)
    assert row["hour"] in hours and row["requests"] == 1
    assert_error(http.get("/v1/usage", params={"group_by": "minute"}), 400, None, "group_by")
