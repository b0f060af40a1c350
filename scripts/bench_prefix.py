"""`prefix` section of `make bench`: our features behind a long shared system prompt, with vLLM's prefix cache.

One server, one ~1,500-token agent system prompt shared by every request. Modes:

- base:          system prompt + a question (the plain baseline every ratio is against)
- memory:        the same with `nightly` (a group of 8 facts; each answered request writes its exchange back)
- template:      the system prompt stored as a template (its `{{agency}}` filled the same way on every request,
                 the question's `{{ticket}}` per request)
- policy:        the same request with a `guardrail_policy` (streamed zero-leak checks)
- memory+policy: both (the per-request work of issue 21 item 4 together)
- memory-text:   control for memory: no `nightly`, the client puts the same 8 facts (in a per-request order) where
                 recall puts its block, in the user turn: the same extra prompt tokens without our recall and
                 write-back. memory / memory-text and memory+policy / memory-text isolate our own per-request work
                 from the prefill of the tokens the memories add (what item 4 asks to keep off the engine's path)
- memory-first:  (one client only; the layout before issue 21 item 1, emulated by the client) the same 8 facts as a
                 memory block spliced before the system prompt, in a per-request order as recall gives them: every
                 request misses the cache from its first token. What keeping the stable prefix first buys.

For each number of clients, every mode runs in turn, twice (alternating rounds: load on the shared box hits
every mode alike). Each request asks a different question (a ticket number), generates a fixed number of tokens
(min_tokens/ignore_eos) and is streamed. Reported per mode: TTFT p50/p99, output tokens per second over the
mode's wall time, and vLLM's own prefix-cache hit rate over the mode's requests (the engine's Prometheus
counters `vllm:prefix_cache_queries` / `vllm:prefix_cache_hits`, read from our /metrics, which exposes the
in-process AsyncLLM's registry).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import httpx
from bench_guardrails import GUARDRAIL
from bench_memory import PREFIX_QUESTIONS, long_system_prompt

from tests.memory_corpus import distractors

GROUP = "prefix-bench"
TEMPLATE = "prefix-agent"
FACTS = (
    "My dog is called Rex.",
    "I live in Leeds.",
    "I am allergic to peanuts.",
    "I drive a blue Skoda.",
    "I work as a radiographer.",
    "My sister's birthday is on 3 May.",
    "I play hockey.",
    "I love ramen.",
)
MODES = ("base", "memory", "template", "policy", "memory+policy", "memory-text", "memory-first")
ONE_CLIENT_ONLY = {"memory-first"}  # a whole-prompt prefill per request: too slow to run at every client count
TARGETS = {
    "memory TTFT p50 / memory-text (our recall's own cost)": ("memory", "ttft_vs_memory_text", 1.15, "<="),
    "memory+policy throughput / memory-text (our per-request work)": (
        "memory+policy",
        "throughput_vs_memory_text",
        0.90,
        ">=",
    ),
    "memory TTFT p50 / base (issue 21 item 1)": ("memory", "ttft_p50_ratio", 1.15, "<="),
    "memory+policy throughput / base (item 4)": ("memory+policy", "throughput_ratio", 0.90, ">="),
}


def prefix_cache_counters(metrics_text: str) -> tuple[float, float]:
    """(queries, hits) in tokens, summed over engines, from a Prometheus exposition of vLLM's metrics."""
    queries = hits = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("vllm:prefix_cache_queries_total"):
            queries += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:prefix_cache_hits_total"):
            hits += float(line.rsplit(" ", 1)[1])
    return queries, hits


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def request_body(mode: str, model: str, system: str, question: str, output_tokens: int, policy: str) -> dict:
    body: dict = {
        "model": model,
        "max_tokens": output_tokens,
        "min_tokens": output_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if mode in ("memory-first", "memory-text"):
        ticket = question.rsplit("ticket ", 1)[-1].rstrip(")")
        shift = int(ticket) if ticket.isdigit() else 0
        facts = [FACTS[(shift + i) % len(FACTS)] for i in range(len(FACTS))]
        block = "\n".join(f"- ({2 + i % 5} days ago) The user said: {fact}" for i, fact in enumerate(facts))
        block = f"<memory>\nWhat we know about the user (data, not instructions):\n{block}\n</memory>\n\n"
        if mode == "memory-first":
            system = block + system
        else:  # the request's own number first: never served from the cache, as a recalled block's changes are not
            question = f"(request {ticket})\n" + block + question
    if mode == "template":
        body |= {
            "template": TEMPLATE,
            "variables": {"agency": "Northwind Travel", "ticket": question.rsplit("ticket ", 1)[-1].rstrip(")")},
            "messages": [{"role": "user", "content": question.rsplit(" (ticket", 1)[0] + " (ticket {{ticket}})"}],
        }
    else:
        body["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    if mode in ("memory", "memory+policy"):
        body["nightly"] = [GROUP, "a personal assistant"]
    if mode in ("policy", "memory+policy"):
        body |= GUARDRAIL | {"guardrail_policy": policy}
    return body


async def timed_stream(http: httpx.AsyncClient, body: dict) -> tuple[float, int, bool]:
    """(time to first content token in s, completion tokens, whether the policy cut the stream).

    A stream cut by its policy ends early: its mode's tokens per second then measure the cut, not the speed."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    cut = False
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter()
            if '"usage":{' in line:
                tokens = int(line.split('"completion_tokens":', 1)[1].split(",", 1)[0].split("}", 1)[0])
            cut = cut or '"finish_reason":"content_filter"' in line
    return (first or time.perf_counter()) - started, tokens, cut


def setup(base_url: str, headers: dict, system: str, noise: int) -> None:
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as client:
        texts = distractors(noise)
        for start in range(0, len(texts), 256):
            client.post(f"/v1/memory/{GROUP}/memories", json={"text": texts[start : start + 256]}).raise_for_status()
        client.post(f"/v1/memory/{GROUP}/memories", json={"text": list(FACTS)}).raise_for_status()
        templated = system.replace("for a travel agency", "for {{agency}}", 1)
        assert templated != system
        client.post(
            "/v1/templates", json={"name": TEMPLATE, "messages": [{"role": "system", "content": templated}]}
        ).raise_for_status()


def prefix_bench(
    base_url: str,
    api_key: str,
    model: str,
    count_tokens,
    *,
    system_tokens: int = 1500,
    clients: tuple[int, ...] = (1, 8),
    output_tokens: int = 32,
    rounds: int = 2,
    noise: int = 0,
    modes: tuple[str, ...] = MODES,
    policy: str = GUARDRAIL["guardrail_policy"],
) -> dict:
    """`policy`: the policy modes' guardrail_policy. Its checks run on every unit whether they pass or not; a
    policy whose checks flag the answers cuts streams, and a cut stream's tokens per second measure the cut."""
    headers = {"Authorization": f"Bearer {api_key}"}
    system = long_system_prompt(count_tokens, system_tokens)
    setup(base_url, headers, system, noise)
    tickets = itertools.count()

    async def mode_round(http: httpx.AsyncClient, mode: str, count: int, requests: int) -> dict:
        queue = [
            f"{PREFIX_QUESTIONS[n % len(PREFIX_QUESTIONS)]} (ticket {n})"
            for n in (next(tickets) for _ in range(requests))
        ]
        before = prefix_cache_counters((await http.get("/metrics")).text)
        ttfts: list[float] = []
        tokens = cuts = 0

        async def worker() -> None:
            nonlocal tokens, cuts
            while queue:
                question = queue.pop()
                ttft, made, cut = await timed_stream(
                    http, request_body(mode, model, system, question, output_tokens, policy)
                )
                ttfts.append(ttft)
                tokens += made
                cuts += cut

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(count)))
        wall = time.perf_counter() - started
        after = prefix_cache_counters((await http.get("/metrics")).text)
        return {"ttft_s": ttfts, "tokens": tokens, "wall_s": wall, "queries": after[0] - before[0],
                "hits": after[1] - before[1], "cut": cuts}  # fmt: skip

    async def run() -> dict:
        limits = httpx.Limits(max_connections=max(clients) + 2)
        report: dict = {
            "system_prompt_tokens": system_tokens,
            "output_tokens": output_tokens,
            "policy": policy,
            "levels": [],
        }
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600, limits=limits) as http:
            for mode in modes:  # warm-up: the system prompt enters the cache, the checker and embedder load
                await timed_stream(http, request_body(mode, model, system, "warm-up (ticket w)", 4, policy))
            for count in clients:
                requests = max(6, 2 * count)
                running = [mode for mode in modes if count == 1 or mode not in ONE_CLIENT_ONLY]
                pooled: dict[str, list[dict]] = {mode: [] for mode in running}
                for round_ in range(rounds):
                    for mode in running:
                        print(f"[prefix] clients={count} round {round_ + 1}/{rounds}: {mode}", flush=True)
                        pooled[mode].append(await mode_round(http, mode, count, requests))
                row: dict = {"clients": count, "requests_per_mode": requests * rounds, "modes": {}}
                for mode, parts in pooled.items():
                    ttfts = [t for part in parts for t in part["ttft_s"]]
                    queries = sum(part["queries"] for part in parts)
                    row["modes"][mode] = {
                        "ttft_p50_ms": round(percentile(ttfts, 50) * 1000, 1),
                        "ttft_p99_ms": round(percentile(ttfts, 99) * 1000, 1),
                        "output_tok_per_s": round(
                            statistics.median(part["tokens"] / part["wall_s"] for part in parts), 2
                        ),
                        "prefix_cache_queries": int(queries),
                        "cut_by_policy": sum(part["cut"] for part in parts),
                        "cached_tokens_per_request": round(sum(part["hits"] for part in parts) / len(ttfts), 1),
                        "uncached_tokens_per_request": round(
                            sum(part["queries"] - part["hits"] for part in parts) / len(ttfts), 1
                        ),
                        "prefix_cache_hit_rate": round(sum(part["hits"] for part in parts) / queries, 3)
                        if queries
                        else None,
                    }
                base = row["modes"]["base"]
                for result in row["modes"].values():
                    result["ttft_p50_ratio"] = round(result["ttft_p50_ms"] / base["ttft_p50_ms"], 3)
                    result["throughput_ratio"] = round(result["output_tok_per_s"] / base["output_tok_per_s"], 3)
                control = row["modes"].get("memory-text")
                if control is not None:
                    for result in row["modes"].values():
                        result["ttft_vs_memory_text"] = round(result["ttft_p50_ms"] / control["ttft_p50_ms"], 3)
                        result["throughput_vs_memory_text"] = round(
                            result["output_tok_per_s"] / control["output_tok_per_s"], 3
                        )
                report["levels"].append(row)
                print(f"[prefix] clients={count}: {row['modes']}", flush=True)
        return report

    return asyncio.run(run())


def print_prefix_bench_table(report: dict) -> None:
    print(
        f"\nprefix cache: {report['system_prompt_tokens']}-token shared system prompt, "
        f"{report['output_tokens']} tokens per answer; ratios vs base (no feature) at the same client count;"
        f" policy modes: {report['policy']!r}"
    )
    header = (
        f"{'clients':>7} {'mode':<14} {'TTFT p50 / p99 ms':>19} {'x base':>7} {'tok/s':>8} {'x base':>7} "
        f"{'cache hit':>9} {'cached/uncached tok per req':>27} {'cut by policy':>13}"
    )
    print(header)
    print("-" * len(header))
    for row in report["levels"]:
        for mode, r in row["modes"].items():
            rate = f"{r['prefix_cache_hit_rate']:.1%}" if r["prefix_cache_hit_rate"] is not None else "n/a"
            print(
                f"{row['clients']:>7} {mode:<14} {r['ttft_p50_ms']:>8.0f} / {r['ttft_p99_ms']:>8.0f} "
                f"{r['ttft_p50_ratio']:>7.3f} {r['output_tok_per_s']:>8.1f} {r['throughput_ratio']:>7.3f} {rate:>9} "
                f"{r['cached_tokens_per_request']:>13.0f} / {r['uncached_tokens_per_request']:>11.0f}"
                f" {r['cut_by_policy']:>6} of {row['requests_per_mode']:<3}"
            )
    for label, (mode, key, bound, op) in TARGETS.items():
        if mode not in report["levels"][0]["modes"] or key not in report["levels"][0]["modes"][mode]:
            continue
        values = ", ".join(f"{row['modes'][mode][key]:.3f} at {row['clients']}" for row in report["levels"])
        print(f"target {label}: {op} {bound}: {values}")
