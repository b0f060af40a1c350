"""The configurable limits on a second server started with them set small: quotas, per-key concurrency, body size,
Host allow-list, CORS, /metrics behind a key, and open mode decided at start-up (stored keys only)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    MODEL,
    RunningServer,
    assert_error,
    keyed_http,
    keys_cli,
    new_key,
    server_env,
    shipped_config,
    start_server,
    write_config,
)

SECURITY = {
    "max_body_bytes": 65536,
    "allowed_hosts": ["api.example.com"],
    "cors_origins": ["https://app.example.com"],
    "max_concurrent_requests_per_key": 1,
    "max_concurrent_streams_per_key": 1,
    "metrics_require_key": True,
    "quotas": {"memory_groups": 2, "memories_per_group": 3, "templates": 1, "adapters": 1, "adapter_versions": 1},
}


@pytest.fixture(scope="module")
def configured(
    tmp_path_factory: pytest.TempPathFactory, adapter_sources: Path
) -> Iterator[tuple[RunningServer, dict, dict]]:
    """A server with small limits and one stored admin key (created by the CLI before it starts, no static keys)."""
    folder = tmp_path_factory.mktemp("configured")
    raw = shipped_config()
    raw["security"] = SECURITY
    config = write_config(folder, raw)
    env = server_env(
        LLM_SERVER_CONFIG=str(config),
        LLM_SERVER_DATA_DIR=str(folder / "data"),
        LLM_SERVER_ADAPTERS_DIR=str(folder / "adapters"),
        LLM_SERVER_ADAPTER_SOURCE_ROOTS=str(adapter_sources),
    )
    admin = json.loads(keys_cli(env, "create", "--name", "admin", "--admin").splitlines()[0])
    server = start_server(folder / "server.log", env=env)
    try:
        yield server, admin, env
    finally:
        server.stop()


def test_started_with_stored_keys_only_it_needs_a_key_and_metrics_too(configured) -> None:
    server, admin, _ = configured
    with httpx.Client(base_url=server.base_url, timeout=60) as anonymous:
        assert_error(anonymous.get("/v1/models"), 401, "invalid_api_key", None)
        assert_error(anonymous.get("/metrics"), 401, "invalid_api_key", None)  # metrics_require_key
    with keyed_http(server, admin["key"]) as session:
        assert session.get("/metrics").status_code == 200


def test_quotas_per_key(configured, adapter_sources: Path) -> None:
    server, admin, _ = configured
    with keyed_http(server, admin["key"]) as admin_session:
        tenant = new_key(admin_session, name="quota")
    with keyed_http(server, tenant["key"]) as session:
        for group in ("g1", "g2"):
            assert session.post(f"/v1/memory/{group}/memories", json={"text": "a fact"}).status_code == 200
        third = session.post("/v1/memory/g3/memories", json={"text": "a fact"})
        assert_error(third, 403, "quota_exceeded", "memory_group")
        assert session.post("/v1/memory/g1/memories", json={"text": ["b", "c"]}).status_code == 200
        assert_error(session.post("/v1/memory/g1/memories", json={"text": "d"}), 403, "quota_exceeded", "text")
        # The chat's `nightly` write-back keeps the quotas too: the answer comes, the exchange is not stored.
        full = session.get("/v1/memory/g1").json()
        for group in ("g1", "g3"):
            answered = session.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "I live in Lyon and I like green tea."}],
                    "max_tokens": 4,
                    "nightly": [group, "travel"],
                },
            )
            assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"], answered.text
        assert session.get("/v1/memory/g1").json() == full
        assert_error(session.get("/v1/memory/g3"), 404, "memory_group_not_found", "memory_group")
        template = {"messages": [{"role": "system", "content": "x"}]}
        assert session.post("/v1/templates", json={"name": "t1", **template}).status_code == 201
        assert_error(session.post("/v1/templates", json={"name": "t2", **template}), 403, "quota_exceeded", "name")
        source = str(adapter_sources / "alpha")
        assert session.post("/v1/adapters", json={"name": "q1", "path": source}).status_code == 201
        assert_error(session.post("/v1/adapters", json={"name": "q1", "path": source}), 403, "quota_exceeded", "name")
        assert_error(session.post("/v1/adapters", json={"name": "q2", "path": source}), 403, "quota_exceeded", "name")
        # Each refusal is counted under the key's id: group, memory, template, adapter version, adapter.
        quota_line = f'llm_server_refusals_total{{key_id="{tenant["id"]}",reason="quota"}}'
        counted = [line for line in session.get("/metrics").text.splitlines() if line.startswith(quota_line)]
        assert counted and float(counted[0].split()[-1]) == 5, counted
        # An admin is not held to a tenant's quotas.
    with keyed_http(server, admin["key"]) as admin_session:
        assert admin_session.post("/v1/memory/g1/memories", json={"text": ["1", "2", "3", "4"]}).status_code == 200


def test_one_request_in_flight_per_key(configured) -> None:
    server, admin, _ = configured
    with keyed_http(server, admin["key"]) as admin_session:
        tenant = new_key(admin_session, name="busy")
    started = threading.Event()
    finished = threading.Event()

    def long_stream() -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": 200,
            "min_tokens": 200,
            "stream": True,
        }
        with (
            keyed_http(server, tenant["key"]) as session,
            session.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    started.set()
        finished.set()

    worker = threading.Thread(target=long_stream)
    worker.start()
    assert started.wait(120)
    with keyed_http(server, tenant["key"]) as session:
        second = session.get("/v1/models")
        if not finished.is_set():
            assert_error(second, 429, "too_many_concurrent_requests", None)
            assert second.headers["retry-after"] == "1"
    worker.join(300)
    with keyed_http(server, tenant["key"]) as session:
        assert session.get("/v1/models").status_code == 200


def test_body_limit_host_list_and_cors_are_configurable(configured) -> None:
    server, admin, _ = configured
    with keyed_http(server, admin["key"]) as session:
        big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 70_000}]}
        assert_error(session.post("/v1/chat/completions", json=big), 413, "request_too_large", None)
        assert session.get("/v1/models", headers={"Host": "api.example.com"}).status_code == 200
        assert_error(session.get("/v1/models", headers={"Host": "other.example.com"}), 400, "invalid_host", None)
        preflight = session.options(
            "/v1/chat/completions",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        allowed = session.get("/v1/models", headers={"Origin": "https://app.example.com"})
        assert (
            allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        )
        refused = session.get("/v1/models", headers={"Origin": "https://evil.example.com"})
        assert_error(refused, 403, "origin_not_allowed", None)


def test_zz_revoking_every_stored_key_never_opens_the_server(configured) -> None:
    server, _, env = configured
    for line in keys_cli(env, "list").splitlines():
        keys_cli(env, "revoke", json.loads(line)["id"])
    with httpx.Client(base_url=server.base_url, timeout=60) as anonymous:
        assert_error(anonymous.get("/v1/models"), 401, "invalid_api_key", None)
        assert_error(anonymous.post("/v1/keys", json={"name": "x"}), 401, "invalid_api_key", None)
