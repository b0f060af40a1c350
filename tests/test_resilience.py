"""Stopping under load: SIGTERM drains in-flight requests and streams and loses nothing; each test has its own server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    API_KEY,
    MODEL,
    RunningServer,
    engine_running_requests,
    new_key,
    server_env,
    start_server,
    wait_until,
)

GROUP = "drain-group"
TOKENS = 64


def ask(base_url: str, key: str, index: int, stream: bool) -> tuple[str, int, str]:
    """One `nightly` request telling a fact; (request id, completion tokens, how it ended)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"My locker number is {4100 + index}. Tell me about lockers."}],
        "max_tokens": TOKENS,
        "min_tokens": TOKENS,
        "temperature": 0.7,
        "nightly": [GROUP, "remember my locker"],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=180) as session:
        if not stream:
            response = session.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            completion = response.json()
            return response.headers["x-request-id"], completion["usage"]["completion_tokens"], "complete"
        with session.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            usage = [json.loads(line[6:])["usage"] for line in lines[:-1] if '"usage":{' in line]
            return response.headers["x-request-id"], usage[-1]["completion_tokens"], lines[-1]


def check_nothing_lost(server: RunningServer, key: dict, answered: list[tuple[str, int, str]], credits: int) -> None:
    """Every answered request has its usage record, its debit and its remembered exchange."""
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key['key']}"}, timeout=60) as user:
        for request_id, completion_tokens, _ in answered:
            usage = user.get(f"/v1/usage/requests/{request_id}")
            assert usage.status_code == 200, (request_id, usage.text)
        memories = user.get(f"/v1/memory/{GROUP}/memories", params={"limit": 1000}).json()["data"]
        remembered = {memory["source_request_id"] for memory in memories}
        assert {request_id for request_id, _, _ in answered} <= remembered
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as admin:
        balance = admin.get(f"/v1/keys/{key['id']}").json()["credits"]
        records = [admin.get(f"/v1/usage/requests/{rid}").json() for rid, _, _ in answered]
    spent = sum(record["data"][0]["prompt_tokens"] + record["data"][0]["completion_tokens"] for record in records)
    assert credits - balance >= spent  # every acknowledged request's debit is there (unacknowledged ones may add)


@pytest.fixture
def own_env(tmp_path: Path) -> dict[str, str]:
    """A server of its own on SQLite in tmp_path, so it can be stopped and started again."""
    return server_env(
        LLM_SERVER_API_KEYS=API_KEY,
        LLM_SERVER_DATA_DIR=str(tmp_path / "data"),
        LLM_SERVER_ADAPTERS_DIR=str(tmp_path / "adapters"),
        LLM_SERVER_SHUTDOWN_GRACE_S="120",
    )


def test_sigterm_drains_in_flight_requests_and_streams_then_exits(tmp_path: Path, own_env: dict[str, str]) -> None:
    server = start_server(tmp_path / "first.log", env=own_env)
    try:
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}) as admin:
            key = new_key(admin, credits=1_000_000)
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(ask, server.base_url, key["key"], index, index % 2 == 0) for index in range(8)]
            assert wait_until(lambda: engine_running_requests(server) == 8, timeout_s=120), server.log()[-2000:]
            server.process.send_signal(signal.SIGTERM)
            # New connections are refused at once...
            assert wait_until(lambda: _refused(server), timeout_s=10)
            # ...while every request already in flight finishes in full.
            answered = [future.result(timeout=180) for future in futures]
        assert all(tokens == TOKENS for _, tokens, _ in answered), answered
        assert all(end in ("complete", "data: [DONE]") for _, _, end in answered), answered
        assert server.process.wait(timeout=120) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        server.stop()
    log = server.log()
    assert "Waiting for connections to close" in log or "Shutting down" in log
    again = start_server(tmp_path / "second.log", env=own_env)
    try:
        check_nothing_lost(again, key, answered, 1_000_000)
    finally:
        again.stop()


def _refused(server: RunningServer) -> bool:
    try:
        httpx.get(f"{server.base_url}/health", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path, own_env: dict[str, str]) -> None:
    server = start_server(tmp_path / "first.log", env=own_env)
    answered: list[tuple[str, int, str]] = []
    try:
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}) as admin:
            key = new_key(admin, credits=1_000_000)
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(ask, server.base_url, key["key"], index, index % 2 == 0) for index in range(24)]
            while sum(1 for f in futures if f.done()) < 8:  # some acknowledged, more in flight
                time.sleep(0.05)
            server.process.send_signal(signal.SIGKILL)
            failed_before = [repr(f.exception()) for f in futures if f.done() and f.exception() is not None]
            assert not failed_before  # under load, before the kill, every request succeeds
            server.process.wait(timeout=30)
            for future in futures:
                try:
                    outcome = future.result(timeout=60)
                except (httpx.HTTPError, AssertionError):
                    continue  # in flight when the server died: not acknowledged
                if outcome[2] in ("complete", "data: [DONE]"):  # the whole response reached the client
                    answered.append(outcome)
    finally:
        server.stop()
        _kill_orphans(server)
    assert len(answered) >= 8
    again = start_server(tmp_path / "second.log", env=own_env)
    try:
        check_nothing_lost(again, key, answered, 1_000_000)
    finally:
        again.stop()
    databases = list((tmp_path / "data").glob("*.sqlite3"))
    assert databases
    for database in databases:
        with closing(sqlite3.connect(database)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", database


def _kill_orphans(server: RunningServer) -> None:
    """The engine core and training workers of a server killed with SIGKILL (its own process group)."""
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
