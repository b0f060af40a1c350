"""Gateway benchmark pieces for scripts/bench.py (`--sections gateway`).

- request overhead at 32 concurrent clients, same server, same prompt tokens:
  the bare path (static key, plain request, bodies not logged) against the
  gateway path (stored key with credits and rate limits, a template rendered
  with variables, session id and tags, bodies logged). One token per request
  (non-streaming), so the engine's share is as small as it gets and the
  gateway's work shows; rounds alternate to spread drift over both.
- per-step costs in process on real SQLite: key authentication, queueing a
  usage record (and the batched write rate), template rendering.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from server.gateway.keys import KeySpec, KeyStore
from server.gateway.templates import render
from server.gateway.usage import UsageQuery, UsageRecord, UsageStore

SYSTEM = "You are a helpful assistant for a lighthouse museum. Answer in English."
QUESTION = "When was the first lighthouse built?"


def _summary(latencies: list[float], wall_s: float) -> dict:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "req_per_s": round(len(ordered) / wall_s, 2),
    }


async def _drive(
    client: httpx.AsyncClient, key: str, body: dict, concurrency: int, requests: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    remaining = iter(range(requests))
    headers = {"Authorization": f"Bearer {key}"}

    async def worker() -> None:
        for _ in remaining:
            start = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


async def _overhead(base_url: str, admin_key: str, model: str, concurrency: int, rounds: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=600) as client:
        admin = {"Authorization": f"Bearer {admin_key}"}
        created = await client.post(
            "/v1/keys",
            headers=admin,
            json={"name": "bench", "credits": 10**12, "requests_per_minute": 10**6, "tokens_per_minute": 10**12},
        )
        created.raise_for_status()
        stored_key = created.json()["key"]
        template = {"name": f"bench-{int(time.time())}", "messages": [{"role": "system", "content": "{{system}}"}]}
        (
            await client.post("/v1/templates", headers={"Authorization": f"Bearer {stored_key}"}, json=template)
        ).raise_for_status()
        common = {"model": model, "max_tokens": 1, "temperature": 0}
        bare = {
            **common,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            "log_query_body": False,
            "log_response_body": False,
        }
        gateway = {
            **common,
            "template": template["name"],
            "variables": {"system": SYSTEM, "question": QUESTION},
            "messages": [{"role": "user", "content": "{{question}}"}],
            "session_id": "bench-session",
            "tags": ["bench", "gateway"],
            "user": "bench-user",
        }
        requests = 4 * concurrency
        await _drive(client, admin_key, bare, concurrency, concurrency)  # warm-up
        await _drive(client, stored_key, gateway, concurrency, concurrency)
        runs: dict[str, tuple[list[float], float]] = {"bare": ([], 0.0), "gateway": ([], 0.0)}
        for _ in range(rounds):
            for name, key, body in (("bare", admin_key, bare), ("gateway", stored_key, gateway)):
                latencies, wall = await _drive(client, key, body, concurrency, requests)
                runs[name] = (runs[name][0] + latencies, runs[name][1] + wall)
    result = {name: _summary(latencies, wall) for name, (latencies, wall) in runs.items()}
    result["concurrency"] = concurrency
    result["p50_ratio"] = round(result["gateway"]["p50_ms"] / result["bare"]["p50_ms"], 3)
    result["throughput_ratio"] = round(result["gateway"]["req_per_s"] / result["bare"]["req_per_s"], 3)
    return result


def gateway_overhead(base_url: str, admin_key: str, model: str, concurrency: int = 32, rounds: int = 3) -> dict:
    return asyncio.run(_overhead(base_url, admin_key, model, concurrency, rounds))


def _per_op_us(seconds: float, count: int) -> float:
    return round(seconds / count * 1e6, 2)


async def _component_costs(folder: Path, count: int) -> dict:
    keys = KeyStore(folder / "keys.sqlite3")
    usage = UsageStore(folder / "usage.sqlite3")
    await keys.open()
    await usage.open()
    try:
        for index in range(100):  # a realistic table, not a single row
            await keys.create(KeySpec(name=f"k{index}"))
        _, secret = await keys.create(KeySpec(name="bench", credits=10**9))
        start = time.perf_counter()
        for _ in range(count):
            await keys.authenticate(secret)
        authenticate_us = _per_op_us(time.perf_counter() - start, count)

        record = UsageRecord("req", time.time(), "owner", None, "m", None, None, 30, 1, 50.0, 200, tags=("a", "b"))
        start = time.perf_counter()
        for _ in range(count):
            usage.record(record)
        enqueue_us = _per_op_us(time.perf_counter() - start, count)
        await usage.aggregate(UsageQuery((), 0.0, time.time() + 1, owner=None))  # waits for the writes
        written_per_s = round(count / (time.perf_counter() - start))
    finally:
        await usage.close()
        await keys.close()
    messages = [{"role": "system", "content": "{{system}}"}, {"role": "user", "content": "Q: {{question}} ({{lang}})"}]
    variables = {"system": SYSTEM, "question": QUESTION, "lang": "en"}
    start = time.perf_counter()
    for _ in range(count):
        render(messages, variables)
    render_us = _per_op_us(time.perf_counter() - start, count)
    return {
        "operations": count,
        "key_authenticate_us": authenticate_us,
        "usage_record_enqueue_us": enqueue_us,
        "usage_records_written_per_s": written_per_s,
        "template_render_us": render_us,
    }


def component_costs(count: int = 5000) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(_component_costs(Path(folder), count))


def print_gateway_table(report: dict) -> None:
    overhead = report.get("overhead")
    if overhead:
        print(f"\ngateway overhead at {overhead['concurrency']} concurrent clients (1-token completions)")
        print(f"{'path':>8} | {'requests':>8} | {'p50 ms':>8} | {'p99 ms':>8} | {'req/s':>7}")
        for name in ("bare", "gateway"):
            row = overhead[name]
            print(
                f"{name:>8} | {row['requests']:>8} | {row['p50_ms']:>8.1f} | {row['p99_ms']:>8.1f} | {row['req_per_s']:>7.1f}"
            )
        print(f"ratio gateway/bare: p50 {overhead['p50_ratio']:.3f}, throughput {overhead['throughput_ratio']:.3f}")
    costs = report["components"]
    print(
        f"per step (in process, {costs['operations']} ops): key authenticate {costs['key_authenticate_us']} µs, "
        f"usage record enqueue {costs['usage_record_enqueue_us']} µs "
        f"({costs['usage_records_written_per_s']} records/s written), template render {costs['template_render_us']} µs"
    )
