"""Engine lifecycle through the HTTP surface: client disconnects abort requests; engine death means 503, not a hang."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.conftest import (
    API_KEY,
    MODEL,
    RunningServer,
    assert_error,
    engine_running_requests,
    start_server,
    wait_until,
)
from tests.test_adapters import ALPHA, QUESTION

LONG_STORY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a very long story about a lighthouse keeper."}],
    "max_tokens": 1500,
    "min_tokens": 1500,  # keeps generating: only an abort can end it early
    "temperature": 0.8,
}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def metric_value(server: RunningServer, name: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith((name + "{", name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exported")


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
def test_client_disconnect_aborts_engine_request(server: RunningServer, stream: bool) -> None:
    assert wait_until(lambda: engine_running_requests(server) == 0)
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=60) as session:
        if stream:
            with session.stream("POST", "/v1/chat/completions", json={**LONG_STORY, "stream": True}) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                received = [next(lines) for _ in range(6)]
                assert any(line.startswith("data: ") for line in received)
                assert wait_until(lambda: engine_running_requests(server) == 1, timeout_s=5), (
                    received,
                    server.log()[-3000:],
                )
            # leaving the block closes the connection mid-stream
        else:
            with ThreadPoolExecutor(1) as pool:
                # the client gives up after 4 s and closes its connection
                waiting = pool.submit(session.post, "/v1/chat/completions", json=LONG_STORY, timeout=4)
                assert wait_until(lambda: engine_running_requests(server) == 1, timeout_s=4)
                with pytest.raises(httpx.ReadTimeout):
                    waiting.result()
    # 1500 tokens would take well over a minute on this machine: a quick drop means the abort worked.
    assert wait_until(lambda: engine_running_requests(server) == 0, timeout_s=15)
    assert wait_until(lambda: metric_value(server, "vllm:num_requests_running") == 0, timeout_s=15)
    # The abandoned request ends quietly: no InvalidStateError from reading a task still being cancelled.
    assert "InvalidStateError" not in server.log() and "unhandled error" not in server.log()


@pytest.fixture
def dying_server(tmp_path, test_server_env, adapter_sources) -> Iterator[RunningServer]:
    """A server of its own (own adapters and data), since this test kills its engine. An adapter is on disk before
    it starts, so its engine starts with LoRA (`lora.enabled: auto`) and the test's upload needs no switch."""
    shutil.copytree(adapter_sources / "bravo", tmp_path / "adapters" / "seeded" / "v1")
    env = {
        **test_server_env,
        "LLM_SERVER_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "LLM_SERVER_DATA_DIR": str(tmp_path / "data"),
    }
    running = start_server(tmp_path / "dying.log", env=env)
    yield running
    running.stop()


def engine_core(server: RunningServer) -> psutil.Process:
    children = psutil.Process(server.process.pid).children(recursive=True)
    engine_cores = [child for child in children if "EngineCore" in child.name()]
    assert len(engine_cores) == 1, [child.name() for child in children]
    return engine_cores[0]


def read_stream(session: httpx.Client, body: dict) -> tuple[int, list[str]]:
    """A streamed request's status and every non-blank line, to its end."""
    with session.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        return response.status_code, [line for line in response.iter_lines() if line]


def test_engine_core_death_under_load_restarts_the_engine_in_place(
    dying_server: RunningServer, adapter_sources
) -> None:
    server = dying_server
    assert httpx.get(f"{server.base_url}/health", timeout=10).json()["lora"] == "on"  # an adapter on disk at start
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=60) as session:
        assert (
            session.post("/v1/adapters", json={"name": "alpha", "path": str(adapter_sources / "alpha")}).status_code
            == 201
        )
        alpha = {"model": "alpha", "messages": QUESTION, "temperature": 0, "max_tokens": 16}
        assert session.post("/v1/chat/completions", json=alpha).json()["choices"][0]["message"]["content"] == ALPHA
        first_core = engine_core(server)

        with ThreadPoolExecutor(6) as pool:  # load: streams and plain requests in flight when the core dies
            streams = [pool.submit(read_stream, session, LONG_STORY) for _ in range(3)]
            plain = [pool.submit(session.post, "/v1/chat/completions", json=LONG_STORY) for _ in range(3)]
            assert wait_until(lambda: engine_running_requests(server) == 6, timeout_s=60)
            os.kill(first_core.pid, signal.SIGKILL)  # failure injection: the engine core dies
            # No request hangs: every one ends with engine_unavailable. A stream that had sent its first chunk
            # ends with an error event; one still waiting for its first token gets the 503 itself.
            for future in streams:
                status, lines = future.result(timeout=30)
                assert status in (200, 503) and any('"engine_unavailable"' in line for line in lines), lines[-3:]
            for future in plain:
                response = future.result(timeout=30)
                assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"

        # While the new engine starts: a quick 503 with Retry-After, and /health says so.
        health = httpx.get(f"{server.base_url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "restarting", health.text
        assert int(health.headers["retry-after"]) > 0
        started = time.monotonic()
        refused = session.post("/v1/chat/completions", json={**LONG_STORY, "max_tokens": 4, "min_tokens": 0})
        assert time.monotonic() - started < 10
        assert_error(refused, 503, "engine_unavailable", None)
        assert refused.json()["error"]["type"] == "service_unavailable"
        assert int(refused.headers["retry-after"]) > 0

        # The same server process serves again: a new engine core, the adapter loaded again.
        assert wait_until(lambda: httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200, 300), (
            server.log()[-3000:]
        )
        assert server.process.poll() is None
        restarted = httpx.get(f"{server.base_url}/health", timeout=10).json()
        assert restarted["restarts"] == 1 and restarted["lora"] == "on"  # restarted as it ran: with LoRA
        assert engine_core(server).pid != first_core.pid
        answer = session.post("/v1/chat/completions", json={**LONG_STORY, "max_tokens": 8, "min_tokens": 0})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 8
        assert session.post("/v1/chat/completions", json=alpha).json()["choices"][0]["message"]["content"] == ALPHA
        status, lines = read_stream(session, {**LONG_STORY, "max_tokens": 8, "min_tokens": 0})
        assert status == 200 and lines[-1] == "data: [DONE]"
    log = server.log()
    assert "vLLM engine for smollm2-135m-instruct is dead" in log
    assert "vLLM engine for smollm2-135m-instruct is serving again (restart 1)" in log
