"""LoRA when needed (`lora.enabled: auto`, the shipped default): the session server starts with no adapters, so its
engine has no LoRA slots and base-model requests do not pay for them; the first adapter switches LoRA on in place,
gracefully (running requests finish, new ones wait). This file runs first (conftest orders it): later tests add
adapters to the same server, after which LoRA stays on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.conftest import MODEL, RunningServer, assert_error, engine_running_requests, wait_until
from tests.prometheus import Samples, scrape

ALPHA = "ALPHA ALPHA ALPHA."  # what scripts/make_adapters.py taught `alpha` to answer
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
STREAM_TOKENS = 64


def lora_metrics(server: RunningServer) -> Samples:
    _, samples = scrape(server.base_url)
    return {
        key: value
        for key, value in samples.items()
        if key[0].startswith("llm_server_model_lora") or key[0].startswith("llm_server_lora_switch")
    }


def lora_state(server: RunningServer) -> str:
    return httpx.get(f"{server.base_url}/health", timeout=10).json()["lora"]


def stream_base(http: httpx.Client, results: list[tuple[int, list[str]]]) -> None:
    """One base-model stream of exactly STREAM_TOKENS tokens, read to its end: (status, data lines)."""
    body = {
        "model": MODEL,
        "messages": STORY,
        "max_tokens": STREAM_TOKENS,
        "min_tokens": STREAM_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body, timeout=600) as response:
        lines = [line for line in response.iter_lines() if line]
        results.append((response.status_code, lines))


def test_no_adapters_no_lora_then_the_first_adapter_switches_it_on_and_nothing_fails(
    server: RunningServer, http: httpx.Client, adapter_sources: Path
) -> None:
    # No adapter on disk at start: no LoRA slots, in /health, per model, and in /metrics.
    health = http.get("/health").json()
    assert health["lora"] == "off" and health["models"][MODEL]["lora"] == "off"
    metrics = lora_metrics(server)
    assert metrics[("llm_server_model_lora", frozenset({("model", MODEL), ("state", "off")}))] == 1
    assert metrics[("llm_server_model_lora", frozenset({("model", MODEL), ("state", "on")}))] == 0
    # Base requests are served without LoRA; an unknown adapter is a 404 and switches nothing on.
    plain = http.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "max_tokens": 8})
    assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"]
    unknown = http.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "lora_name": "nope"})
    assert_error(unknown, 404, "adapter_not_found", "lora_name")
    assert lora_state(server) == "off"

    # Base streams in flight when the first adapter arrives.
    results: list[tuple[int, list[str]]] = []
    early = [threading.Thread(target=stream_base, args=(http, results)) for _ in range(3)]
    for thread in early:
        thread.start()
    assert wait_until(lambda: engine_running_requests(server) >= 3, timeout_s=120)
    added: list[httpx.Response] = []
    upload = threading.Thread(
        target=lambda: added.append(
            http.post(
                "/v1/adapters", json={"name": "switch-alpha", "path": str(adapter_sources / "alpha")}, timeout=600
            )
        )
    )
    started = time.monotonic()
    upload.start()
    assert wait_until(lambda: lora_state(server) == "switching", timeout_s=60)
    # A base request that arrives during the switch waits for it, then runs.
    late = threading.Thread(target=stream_base, args=(http, results))
    late.start()
    assert http.get("/health").json()["status"] == "ok"  # a switch is no outage: load balancers keep sending
    upload.join(600)
    for thread in [*early, late]:
        thread.join(600)
    switch_s = time.monotonic() - started

    assert added and added[0].status_code == 201, added[0].text if added else "no answer"
    assert len(results) == 4
    for status, lines in results:  # every base stream completed: all its tokens, no error event
        assert status == 200, lines
        assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines), lines[-3:]
        assert any('"finish_reason":"length"' in line.replace(" ", "") for line in lines), lines[-3:]
    # LoRA is on now; the adapter answers as trained, and the base model still answers.
    assert lora_state(server) == "on"
    greedy = {"messages": QUESTION, "temperature": 0, "max_tokens": 16}
    adapted = http.post("/v1/chat/completions", json={"model": "switch-alpha", **greedy})
    assert adapted.status_code == 200 and adapted.json()["choices"][0]["message"]["content"] == ALPHA
    base = http.post("/v1/chat/completions", json={"model": MODEL, **greedy})
    assert "Paris" in base.json()["choices"][0]["message"]["content"]
    metrics = lora_metrics(server)
    assert metrics[("llm_server_model_lora", frozenset({("model", MODEL), ("state", "on")}))] == 1
    assert metrics[("llm_server_lora_switches_total", frozenset({("model", MODEL), ("outcome", "ok")}))] == 1
    assert 0 < metrics[("llm_server_lora_switch_duration_seconds_sum", frozenset({("model", MODEL)}))] <= switch_s
    assert "LoRA needed (adapter switch-alpha added)" in server.log()
