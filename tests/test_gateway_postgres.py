"""Two servers on one PostgreSQL database (the session server's, see tests/conftest.py) behave as one: they share
keys, credits, usage and templates (a key made by the CLI works on both, what one records the other reports),
memories (pgvector), stored completions and Responses, fine-tuning jobs (each runs once), rate-limit windows and
in-flight caps, and the adapter registry (the weight files on the directory both are given)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
import torch
from safetensors.torch import save_file

from server.config import SecuritySettings
from tests.conftest import (
    API_KEY,
    MODEL,
    OTHER_API_KEY,
    RunningServer,
    StateDirs,
    assert_error,
    keyed_http,
    keys_cli,
    new_key,
    start_server,
)

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def second_server(
    tmp_path_factory: pytest.TempPathFactory, server: RunningServer, test_server_env: dict[str, str]
) -> Iterator[RunningServer]:
    """Another server process with the session server's environment: the same PostgreSQL database.

    Its engine gets a core of its own (vLLM's CPU binding, as README advises for two engines on one box): with both
    engines bound to core 0, the session engine stalled for two minutes while this one ran its streams (its engine
    core logged "No available shared memory broadcast block found in 60 seconds")."""
    env = test_server_env | {"VLLM_CPU_OMP_THREADS_BIND": str(os.cpu_count() - 1)}
    running = start_server(tmp_path_factory.mktemp("second-server") / "server.log", env=env)
    yield running
    running.stop()


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for what another server writes off its response path (usage, debits)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not seen in time"
        time.sleep(0.2)


def test_servers_on_one_postgres_database_share_keys_usage_and_templates(
    server: RunningServer, second_server: RunningServer, test_server_env: dict[str, str]
) -> None:
    url = test_server_env["LLM_SERVER_DATABASE_URL"]
    assert url.startswith("postgresql://")
    created = json.loads(keys_cli(test_server_env, "create", "--name", "shared", "--credits", "100000"))
    with closing(psycopg.connect(url)) as db:  # the CLI wrote the key, hashed, to PostgreSQL
        stored = db.execute("SELECT hash, name FROM api_keys WHERE id = %s", (created["id"],)).fetchone()
    assert stored[1] == "shared" and created["key"] not in stored[0]

    session_id = f"sess-{uuid.uuid4().hex[:8]}"
    for running in (server, second_server):
        client = openai.OpenAI(base_url=f"{running.base_url}/v1", api_key=created["key"], max_retries=0, timeout=120)
        completion = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=4, extra_body={"session_id": session_id}
        )
        assert completion.choices[0].message.content

    def usage(running: RunningServer) -> list[dict]:
        with keyed_http(running, created["key"]) as session:
            response = session.get("/v1/usage", params={"group_by": "session_id"})
        assert response.status_code == 200, response.text
        return response.json()["data"]

    for running in (server, second_server):  # each server reports both servers' requests
        eventually(lambda on=running: [(row["session_id"], row["requests"]) for row in usage(on)] == [(session_id, 2)])
    (totals,) = usage(server)

    def credits() -> int:
        (listed,) = [
            key for key in map(json.loads, keys_cli(test_server_env, "list").splitlines()) if key["id"] == created["id"]
        ]
        return listed["credits"]

    eventually(lambda: credits() == 100000 - totals["total_tokens"])  # both servers debited the one balance

    name = f"shared-{uuid.uuid4().hex[:8]}"
    with keyed_http(server, created["key"]) as first, keyed_http(second_server, created["key"]) as second:
        made = first.post("/v1/templates", json={"name": name, "messages": HELLO})
        assert made.status_code == 201, made.text
        assert second.get(f"/v1/templates/{name}").json()["id"] == made.json()["id"]
        keys_cli(test_server_env, "revoke", created["id"])
        for session in (first, second):
            assert session.get("/v1/usage").status_code == 401


@pytest.fixture(scope="module")
def both(server: RunningServer, second_server: RunningServer) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """The admin key's sessions on the session server and on the second server."""
    with keyed_http(server, API_KEY) as first, keyed_http(second_server, API_KEY) as second:
        yield first, second


def test_a_fact_told_to_one_server_is_recalled_by_the_other(
    both: tuple[httpx.Client, httpx.Client], second_server: RunningServer
) -> None:
    first, second = both
    group = f"shared-{uuid.uuid4().hex[:8]}"
    told = first.post(
        f"/v1/memory/{group}/memories",
        json={"text": ["My bicycle is a green Gazelle.", "I water the ferns on Sundays."], "user_goal": "a diary"},
    )
    assert told.status_code == 200, told.text
    found = second.post(f"/v1/memory/{group}/search", json={"query": "Which bike do I ride?", "limit": 1})
    assert found.status_code == 200, found.text
    assert [hit["memory"]["text"] for hit in found.json()["data"]] == ["My bicycle is a green Gazelle."]
    assert second.get(f"/v1/memory/{group}").json()["memory_count"] == 2
    memory_id = found.json()["data"][0]["memory"]["id"]
    edited = second.patch(f"/v1/memory/{group}/memories/{memory_id}", json={"text": "My bicycle is a red Batavus."})
    assert edited.status_code == 200, edited.text
    assert first.get(f"/v1/memory/{group}/memories/{memory_id}").json()["text"] == "My bicycle is a red Batavus."
    with keyed_http(second_server, OTHER_API_KEY) as other:  # another key sees nothing of it on either server
        assert_error(other.get(f"/v1/memory/{group}"), 404, "memory_group_not_found", "memory_group")
    assert second.delete(f"/v1/memory/{group}").status_code == 200
    assert_error(first.get(f"/v1/memory/{group}"), 404, "memory_group_not_found", "memory_group")


def test_a_response_stored_on_one_server_is_continued_on_the_other(
    server: RunningServer, second_server: RunningServer
) -> None:
    """Stored chat completions and Responses live in the shared database: `previous_response_id` and the stored
    completions' list work on either server, for their owner only."""
    first, second, other = (
        openai.OpenAI(base_url=f"{running.base_url}/v1", api_key=key, max_retries=0, timeout=120)
        for running, key in ((server, API_KEY), (second_server, API_KEY), (second_server, OTHER_API_KEY))
    )
    started = first.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=4)
    went_on = second.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=started.id, max_output_tokens=4
    )
    assert went_on.previous_response_id == started.id and second.responses.retrieve(started.id).id == started.id
    topic = f"shared-{uuid.uuid4().hex[:8]}"
    stored = second.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=2, store=True, metadata={"topic": topic}
    )
    assert [c.id for c in first.chat.completions.list(metadata={"topic": topic})] == [stored.id]
    with pytest.raises(openai.NotFoundError):  # another key, on the server that stored it
        other.responses.retrieve(started.id)


def test_jobs_queued_on_either_server_each_run_once(
    server: RunningServer, second_server: RunningServer, both: tuple[httpx.Client, httpx.Client]
) -> None:
    """Jobs on groups with nothing to learn fail fast (no training), after being claimed: by one server, once."""
    first, _ = both
    group = f"jobs-{uuid.uuid4().hex[:8]}"
    first.post(f"/v1/memory/{group}/memories", json={"text": "Hello there.", "user_goal": "a diary"}).raise_for_status()
    clients = [
        openai.OpenAI(base_url=f"{running.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        for running in (server, second_server)
    ]
    jobs = [
        clients[i % 2].fine_tuning.jobs.create(
            model=MODEL, training_file=f"memory:{group}", suffix=f"once-{i}-{uuid.uuid4().hex[:6]}"
        )
        for i in range(4)
    ]
    deadline = time.monotonic() + 120
    for i, job in enumerate(jobs):
        while (job := clients[(i + 1) % 2].fine_tuning.jobs.retrieve(job.id)).status in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        assert job.status == "failed" and job.error.code == "nothing_to_learn"
        messages = [event.message for event in clients[i % 2].fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert messages.count("Training started.") == 1, messages
        assert sum(message.startswith("Training failed") for message in messages) == 1, messages


def test_a_rate_limit_holds_across_both_servers(
    server: RunningServer, second_server: RunningServer, both: tuple[httpx.Client, httpx.Client]
) -> None:
    limited = new_key(both[0], name="shared-limit", requests_per_minute=3)
    with keyed_http(server, limited["key"]) as first, keyed_http(second_server, limited["key"]) as second:

        def chat(session: httpx.Client) -> httpx.Response:
            return session.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 1})

        assert [chat(session).status_code for session in (first, second, first)] == [200, 200, 200]
        for session in (second, first):  # the fourth and fifth within the minute: refused by either server
            refused = chat(session)
            assert_error(refused, 429, "rate_limit_exceeded", None)
            assert 0 < int(refused.headers["retry-after"]) <= 60


def test_a_keys_stream_cap_holds_across_both_servers(
    server: RunningServer, second_server: RunningServer, both: tuple[httpx.Client, httpx.Client]
) -> None:
    """`max_concurrent_streams_per_key` long streams, spread over both servers: one more on either is refused (the
    slots are counted in the shared database); once they end, their slots are given back on both."""
    cap = SecuritySettings().max_concurrent_streams_per_key
    key = new_key(both[0], name="shared-streams")
    long = {"model": MODEL, "messages": HELLO, "max_tokens": 1500, "min_tokens": 1500, "stream": True}
    started = [threading.Event() for _ in range(cap)]
    stop, ended = threading.Event(), threading.Event()
    start_s = 300  # each server's engine runs its four long streams on a shared core: allow a loaded box its time

    def stream(i: int) -> None:  # reads its stream (a client that stops reading is cut off) until told to stop
        with (
            keyed_http((server, second_server)[i % 2], key["key"], timeout_s=start_s) as session,
            session.stream("POST", "/v1/chat/completions", json=long) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                started[i].set()
                if stop.is_set():
                    return
        ended.set()  # ran to its end before the test was done with it

    readers = [threading.Thread(target=stream, args=(i,)) for i in range(cap)]
    for reader in readers:
        reader.start()
    try:
        assert all(event.wait(start_s) for event in started)
        with keyed_http(server, key["key"]) as first, keyed_http(second_server, key["key"]) as second:
            for session in (first, second):
                refused = session.post("/v1/chat/completions", json={**long, "max_tokens": 1, "min_tokens": 1})
                assert_error(refused, 429, "too_many_concurrent_requests", None)
                assert refused.headers["retry-after"] == "1"
            plain = second.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 1})
            assert plain.status_code == 200  # requests are under their own, higher cap
        assert not ended.is_set()  # every stream was still open while the others were refused
    finally:
        stop.set()
        for reader in readers:
            reader.join(300)
    short = {"model": MODEL, "messages": HELLO, "max_tokens": 1, "stream": True}
    with keyed_http(server, key["key"]) as first, keyed_http(second_server, key["key"]) as second:
        eventually(lambda: all(s.post("/v1/chat/completions", json=short).status_code == 200 for s in (first, second)))


def tiny_adapter(folder: Path) -> Path:
    """A rank-2 LoRA of zeros for the served model: loads, changes nothing, costs nothing to make."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 576),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(576, 2),
        },
        str(folder / "adapter_model.safetensors"),
    )
    return folder


def test_an_adapter_added_on_one_server_is_served_listed_and_owned_on_the_other(
    server: RunningServer,
    second_server: RunningServer,
    both: tuple[httpx.Client, httpx.Client],
    state_dirs: StateDirs,
    test_server_env: dict[str, str],
) -> None:
    """Owned by a stored key that is no admin: made on one server, its versions, owner, active version and deletion
    hold on both (the registry is in the shared database; the weight files in the adapters folder both mount)."""
    owner, stranger = new_key(both[0], name="adapter-owner"), new_key(both[0], name="adapter-stranger")
    name = f"shared-{uuid.uuid4().hex[:6]}"
    source = tiny_adapter(state_dirs.sources / name)
    with (
        keyed_http(server, owner["key"]) as first,
        keyed_http(second_server, owner["key"]) as second,
        keyed_http(server, stranger["key"]) as other,
    ):

        def listed(session: httpx.Client) -> dict[str, dict]:
            return {adapter["id"]: adapter for adapter in session.get("/v1/adapters").json()["data"]}

        def active(session: httpx.Client) -> list[tuple[int, bool]]:
            versions = session.get(f"/v1/adapters/{name}/versions").json()["data"]
            return [(version["version"], version["active"]) for version in versions]

        made = second.post("/v1/adapters", json={"name": name, "path": str(source)})
        assert made.status_code == 201, made.text
        eventually(lambda: name in listed(first), timeout_s=5)
        assert listed(first)[name]["owned"] is True and listed(first)[name]["shared"] is False
        admin_view = {adapter["id"]: adapter for adapter in both[0].get("/v1/adapters").json()["data"]}
        assert (
            admin_view[name]["owner"] == {a["id"]: a for a in both[1].get("/v1/adapters").json()["data"]}[name]["owner"]
        )
        assert admin_view[name]["owner"] is not None
        ask = {"model": MODEL, "messages": HELLO, "max_tokens": 2, "lora_name": name}
        assert first.post("/v1/chat/completions", json=ask).status_code == 200
        again = first.post("/v1/adapters", json={"name": name, "path": str(source)})  # v2, on the other server
        assert again.status_code == 201, again.text
        eventually(lambda: active(second) == [(1, False), (2, True)], timeout_s=5)  # the active version agrees
        assert active(first) == [(1, False), (2, True)]
        assert second.post("/v1/chat/completions", json=ask).status_code == 200
        # the owner made it on the second server: to another key on the first it does not exist
        assert_error(
            other.post("/v1/adapters", json={"name": name, "path": str(source)}), 404, "adapter_not_found", "name"
        )
        assert_error(other.post("/v1/chat/completions", json=ask), 404, "adapter_not_found", "lora_name")
        assert_error(other.delete(f"/v1/adapters/{name}"), 404, "adapter_not_found", "name")
        url = test_server_env["LLM_SERVER_DATABASE_URL"]
        with closing(psycopg.connect(url)) as db:  # the registry is the database's, no owner file on the folder
            row = db.execute("SELECT active FROM registered_adapters WHERE name = %s", (name,)).fetchone()
        assert row == (2,) and not (state_dirs.adapters / name / "owner.json").exists()
        assert first.delete(f"/v1/adapters/{name}").status_code == 200
        eventually(lambda: name not in listed(second), timeout_s=5)
        assert_error(second.post("/v1/chat/completions", json=ask), 404, "adapter_not_found", "lora_name")
        assert_error(second.delete(f"/v1/adapters/{name}"), 404, "adapter_not_found", "name")
        assert not (state_dirs.adapters / name).exists()
