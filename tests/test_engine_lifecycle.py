"""Engine lifecycle through the HTTP surface: client disconnects abort requests; engine death means 503, not a hang."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.conftest import API_KEY, MODEL, RunningServer, engine_running_requests, start_server, wait_until

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
def dying_server(tmp_path, test_server_env) -> Iterator[RunningServer]:
    """A server of its own, since this test kills its engine."""
    running = start_server(tmp_path / "dying.log", env=test_server_env)
    yield running
    running.stop()


def test_engine_death_gives_503_not_a_hang(dying_server: RunningServer) -> None:
    server = dying_server
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=30) as session:
        in_flight = session.stream("POST", "/v1/chat/completions", json={**LONG_STORY, "stream": True})
        response = in_flight.__enter__()
        lines = response.iter_lines()
        assert next(line for line in lines if '"content":"' in line and '"content":""' not in line)

        children = psutil.Process(server.process.pid).children(recursive=True)
        engine_cores = [child for child in children if "EngineCore" in child.name()]
        assert len(engine_cores) == 1, [child.name() for child in children]
        os.kill(engine_cores[0].pid, signal.SIGKILL)  # failure injection: the engine core dies

        # The open stream ends with an error event instead of hanging.
        rest = list(lines)
        assert any('"engine_unavailable"' in line for line in rest), rest[-5:]
        in_flight.__exit__(None, None, None)

        started = time.monotonic()
        refused = session.post("/v1/chat/completions", json={**LONG_STORY, "max_tokens": 4, "min_tokens": 0})
        assert time.monotonic() - started < 10
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "engine_unavailable"
        assert refused.json()["error"]["type"] == "service_unavailable"

        streamed = session.post("/v1/chat/completions", json={**LONG_STORY, "stream": True})
        assert streamed.status_code == 503

        health = httpx.get(f"{server.base_url}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "engine_dead"
    assert "vLLM engine for smollm2-135m-instruct is dead" in server.log()
