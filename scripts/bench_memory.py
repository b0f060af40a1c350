"""Memory benchmark pieces for scripts/bench.py (`--sections memory`).

- retrieval latency p50/p99 at 10k and 100k memories in one group: the store's
  search alone (HNSW + FTS5) and the whole service search (query embedding,
  both searches, re-ranking);
- ingest rate: end to end (embedding included) and into the store alone;
- chat latency with memory on vs off against a running server.
Embeddings of the synthetic corpus are cached under the results folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from server.config import MemorySettings, load_settings
from server.memory.embedder import Embedder, open_embedder
from server.memory.recall import lexical_query
from server.memory.service import MemoryService
from server.memory.store import NewMemory, SQLiteMemoryStore
from tests.memory_corpus import distractors, labelled_facts

OWNER = "bench"
GROUP = "bench-group"


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
    }


def corpus_embeddings(embedder: Embedder, texts: list[str], cache_dir: Path) -> np.ndarray:
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cached = cache_dir / f"memory-embeddings-{len(texts)}-{digest}.npy"
    if cached.exists():
        return np.load(cached)
    print(f"embedding {len(texts)} memories once (cached in {cached})", flush=True)
    vectors = embedder.encode(texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cached, vectors)
    return vectors


async def bench_group(embedder: Embedder, texts: list[str], vectors: np.ndarray, queries: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteMemoryStore(Path(folder) / "memory.sqlite3", embedder.dimensions)
        await store.open()
        service = MemoryService(store, embedder, MemorySettings())
        group = await store.ensure_group(OWNER, GROUP, "a personal assistant")
        await store.search(group, vectors[0], "", 1)  # the index exists from the start: adds keep it current
        started = time.perf_counter()
        for start in range(0, len(texts), 1024):
            batch = [
                NewMemory(text, "note", vector)
                for text, vector in zip(texts[start : start + 1024], vectors[start : start + 1024], strict=True)
            ]
            await store.add(group, batch)
        store_ingest = len(texts) / (time.perf_counter() - started)
        await store.close()

        reopened = SQLiteMemoryStore(Path(folder) / "memory.sqlite3", embedder.dimensions)
        await reopened.open()
        service = MemoryService(reopened, embedder, MemorySettings())
        started = time.perf_counter()
        await reopened.search(group, vectors[0], "", 1)
        index_load_s = time.perf_counter() - started

        query_vectors = embedder.encode(queries)
        settings = MemorySettings()
        store_ms, service_ms = [], []
        for query, vector in zip(queries, query_vectors, strict=True):
            started = time.perf_counter()
            await reopened.search(group, vector, lexical_query(query), settings.candidates)
            store_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await service.search(OWNER, GROUP, query, settings.top_k)
            service_ms.append((time.perf_counter() - started) * 1000)
        await reopened.close()
    return {
        "memories": len(texts),
        "store_ingest_per_s": round(store_ingest, 1),
        "index_load_s": round(index_load_s, 3),
        "store_search": percentiles(store_ms),
        "service_search": percentiles(service_ms),
    }


async def end_to_end_ingest(embedder: Embedder, texts: list[str]) -> float:
    """Memories per second through the service (embedding included), batches of 64 as API clients send."""
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteMemoryStore(Path(folder) / "memory.sqlite3", embedder.dimensions)
        await store.open()
        service = MemoryService(store, embedder, MemorySettings())
        started = time.perf_counter()
        for start in range(0, len(texts), 64):
            await service.add(OWNER, GROUP, texts[start : start + 64], None, "bench")
        rate = len(texts) / (time.perf_counter() - started)
        await store.close()
        await embedder.close()
        return rate


async def retrieval_report(sizes: list[int], cache_dir: Path) -> dict:
    settings = load_settings()  # the served configuration's embedder, query dtype and threads
    embedder = open_embedder(settings.memory)
    facts = labelled_facts()
    texts = [fact.fact for fact in facts] + distractors(max(sizes) - len(facts))
    vectors = corpus_embeddings(embedder, texts, cache_dir)
    # Retrieval is timed with the threads the server gives its own CPU work (the engine keeps the other core).
    torch.set_num_threads(settings.own_cpu_threads)
    queries = [fact.question for fact in facts] * 3
    report: dict = {"groups": []}
    for size in sizes:
        print(f"memory retrieval: group of {size} memories", flush=True)
        report["groups"].append(await bench_group(embedder, texts[:size], vectors[:size], queries))
    report["end_to_end_ingest_per_s"] = round(await end_to_end_ingest(embedder, texts[:2048]), 1)
    return report


def bench_memory_retrieval(sizes: list[int], cache_dir: Path) -> dict:
    """One event loop for everything: the embedder's batching task belongs to the loop that started it."""
    return asyncio.run(retrieval_report(sizes, cache_dir))


def chat_latency_with_memory(base_url: str, api_key: str, model: str, requests: int = 12) -> dict:
    """Same question, memory off and on (a group of 2,000 memories), alternating; latency p50 ratio."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as client:
        noise = distractors(2000)
        for start in range(0, len(noise), 256):
            client.post(f"/v1/memory/{GROUP}/memories", json={"text": noise[start : start + 256]}).raise_for_status()
        client.post(f"/v1/memory/{GROUP}/memories", json={"text": "My dog is called Rex."}).raise_for_status()
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "What is my dog called?"}],
            "max_tokens": 32,
            "temperature": 0,
            "ignore_eos": True,
        }
        timings: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(requests):
            for mode in ("off", "on"):
                payload = {**body, "nightly": [GROUP, "a personal assistant"]} if mode == "on" else body
                started = time.perf_counter()
                client.post("/v1/chat/completions", json=payload).raise_for_status()
                timings[mode].append((time.perf_counter() - started) * 1000)
    off, on = percentiles(timings["off"]), percentiles(timings["on"])
    return {"memory_off": off, "memory_on": on, "p50_ratio_on_over_off": round(on["p50_ms"] / off["p50_ms"], 3)}


def print_memory_table(report: dict) -> None:
    print("\nmemory retrieval (one group; store = HNSW + BM25 only, service = + query embedding + re-rank)")
    print(
        f"{'memories':>9} {'store p50 / p99 ms':>20} {'service p50 / p99 ms':>22} {'store ingest/s':>15} {'index load s':>13}"
    )
    for group in report["retrieval"]["groups"]:
        store, service = group["store_search"], group["service_search"]
        print(
            f"{group['memories']:>9} {store['p50_ms']:>9.2f} / {store['p99_ms']:>7.2f} "
            f"{service['p50_ms']:>10.2f} / {service['p99_ms']:>8.2f} {group['store_ingest_per_s']:>15.0f} "
            f"{group['index_load_s']:>13.2f}"
        )
    print(f"end-to-end ingest (embedding included): {report['retrieval']['end_to_end_ingest_per_s']:.0f} memories/s")
    if "chat" in report:
        chat = report["chat"]
        print(
            f"chat latency p50, memory off / on: {chat['memory_off']['p50_ms']:.0f} / {chat['memory_on']['p50_ms']:.0f} ms"
            f" (ratio {chat['p50_ratio_on_over_off']:.3f})"
        )


SYSTEM_SENTENCES = (
    "You are a careful assistant for a travel agency; answer in plain language and keep answers short.",
    "Never invent prices, dates or availability; say when you do not know and suggest how to find out.",
    "When the customer mentions a destination, consider season, visas, vaccinations and local holidays.",
    "Prefer trains over short flights where the journey is under five hours, and say why in one sentence.",
    "Quote times in the 24-hour clock and distances in kilometres, with miles in brackets for US customers.",
    "If the customer has children, mention family rooms, child fares and the minimum age for activities.",
    "Refuse politely to book anything; you advise, a human agent books, and you hand over with a summary.",
)


def long_system_prompt(count_tokens, tokens: int = 1500) -> str:
    """A stable agent-style system prompt of about `tokens` tokens (the prefix vLLM should keep cached)."""
    lines: list[str] = []
    rule = 0
    while count_tokens("\n".join(lines)) < tokens:
        rule += 1
        lines.append(f"Rule {rule}: {SYSTEM_SENTENCES[rule % len(SYSTEM_SENTENCES)]}")
    return "\n".join(lines)


PREFIX_QUESTIONS = (
    "What is my dog called?",
    "Where do I live?",
    "What am I allergic to?",
    "Which car do I drive?",
    "What do I do for work?",
    "When is my sister's birthday?",
    "Which sport do I play?",
    "What is my favourite food?",
)


def prefix_ttft_with_memory(
    base_url: str,
    api_key: str,
    model: str,
    system_tokens: int = 1500,
    clients: tuple[int, ...] = (1, 8),
    rounds: int = 3,
) -> dict:
    """Time to first token p50 with memory off vs on, behind a long shared system prompt, at 1 and 8 clients.

    Recalled memories go after the stable prefix (`with_context_block`), so the system prompt stays in
    vLLM's prefix cache whether memory is on or not. Each request asks a different question (both modes),
    so neither the question nor the memories recalled for it are cached from an identical request.
    """
    from transformers import AutoTokenizer

    from server.config import load_settings

    entry = next(entry for entry in load_settings().models if model in entry.names)
    tokenizer = AutoTokenizer.from_pretrained(str(entry.source_path) if entry.is_local else entry.source)
    system = long_system_prompt(lambda text: len(tokenizer.encode(text)), system_tokens)
    headers = {"Authorization": f"Bearer {api_key}"}
    group = "prefix-bench"
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as client:
        noise = distractors(2000)
        for start in range(0, len(noise), 256):
            client.post(f"/v1/memory/{group}/memories", json={"text": noise[start : start + 256]}).raise_for_status()
        facts = [
            "My dog is called Rex.", "I live in Leeds.", "I am allergic to peanuts.", "I drive a blue Skoda.",
            "I work as a radiographer.", "My sister's birthday is on 3 May.", "I play hockey.", "I love ramen.",
        ]  # fmt: skip
        client.post(f"/v1/memory/{group}/memories", json={"text": facts}).raise_for_status()

    async def one(http: httpx.AsyncClient, question: str, memory: bool) -> float:
        body = {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "max_tokens": 16,
            "temperature": 0,
            "stream": True,
        } | ({"nightly": [group, "a personal assistant"]} if memory else {})
        started = time.perf_counter()
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    return (time.perf_counter() - started) * 1000
        return (time.perf_counter() - started) * 1000

    async def level(count: int, memory: bool, offset: int) -> list[float]:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300) as http:
            timings: list[float] = []
            for round_ in range(rounds):
                picks = [PREFIX_QUESTIONS[(offset + round_ * count + i) % len(PREFIX_QUESTIONS)] for i in range(count)]
                questions = [f"{pick} (ticket {offset}-{round_}-{i})" for i, pick in enumerate(picks)]
                timings += await asyncio.gather(*(one(http, question, memory) for question in questions))
            return timings

    async def run() -> dict:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300) as http:
            await one(http, "warm-up", False)  # the system prompt enters the prefix cache
        report: dict = {"system_prompt_tokens": system_tokens, "levels": []}
        for count in clients:
            row: dict = {"clients": count}
            for mode, offset in (("off", 0), ("on", 1), ("off_again", 2), ("on_again", 3)):
                row[mode] = await level(count, mode.startswith("on"), offset)
            off = percentiles(row.pop("off") + row.pop("off_again"))
            on = percentiles(row.pop("on") + row.pop("on_again"))
            row |= {"ttft_memory_off": off, "ttft_memory_on": on, "p50_ratio": round(on["p50_ms"] / off["p50_ms"], 3)}
            report["levels"].append(row)
        return report

    return asyncio.run(run())


def print_prefix_table(report: dict) -> None:
    print(f"\nTTFT behind a {report['system_prompt_tokens']}-token system prompt, memory off vs on (8 facts + 2,000)")
    print(f"{'clients':>8} {'off p50 / p99 ms':>18} {'on p50 / p99 ms':>18} {'on/off p50':>11}")
    for row in report["levels"]:
        off, on = row["ttft_memory_off"], row["ttft_memory_on"]
        print(
            f"{row['clients']:>8} {off['p50_ms']:>8.0f} / {off['p99_ms']:>7.0f}"
            f" {on['p50_ms']:>8.0f} / {on['p99_ms']:>7.0f} {row['p50_ratio']:>11.3f}"
        )
