"""Two servers on one PostgreSQL database (the session server's, see tests/conftest.py) share keys, credits,
usage and templates: a key made by the CLI works on both, what one records the other reports."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing

import openai
import psycopg
import pytest

from tests.conftest import MODEL, RunningServer, keyed_http, keys_cli, start_server

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def second_server(
    tmp_path_factory: pytest.TempPathFactory, server: RunningServer, test_server_env: dict[str, str]
) -> Iterator[RunningServer]:
    """Another server process with the session server's environment: the same PostgreSQL database."""
    running = start_server(tmp_path_factory.mktemp("second-server") / "server.log", env=test_server_env)
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
