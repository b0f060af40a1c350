"""`make eval-memory`: recall@1/5/10 of the server's memory retrieval beside plain baselines, on the
tuning set and on the frozen test sets.

Sets (tests/memory_corpus.py is the TUNING set; tests/memory_testset.py holds the TEST sets, written
apart in another voice and never tuned on):
- tuning-facts: 80 labelled facts + 2,000 tuning distractors;
- test-facts:   36 facts whose questions need paraphrase, a broader word or one step of inference,
                + 2,000 test distractors about the same people and topics;
- test-sessions: two users' dated multi-session conversations (every user turn a memory) + 600 dated
                distractor turns each; questions on time, knowledge updates, inference.
- query-dev:    the query encoder's held-out training rows (server/memory/query_encoder.py), their memories and
                hard negatives + 2,000 tuning distractors, measured with an encoder trained without them: what
                its recipe is chosen on (not run by default).

Methods, on the same memories and questions:
- server: `MemoryService.search` (the retrieval chat uses), in-process on a real SQLite + HNSW store;
- server-pg (with --postgres or --database-url): the same service on the PostgreSQL store (pgvector, tsvector),
  the one servers sharing a database use;
- cosine: brute-force cosine of the same embedder (all-MiniLM-L6-v2) over every memory;
- q-cosine: the same with the questions embedded by memory's query encoder (`memory.query_model`);
- bm25:   plain Okapi BM25 (k1 1.2, b 0.75, lower-cased words, no stemming, no stop words).

    python scripts/eval_memory.py [--out bench-results/eval-memory.json] [--sets test-facts,...]
        [--postgres | --database-url postgresql://...]

--postgres starts a throwaway PostgreSQL (tests/postgres.py: pgserver's binaries, with pgvector).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.config import MemorySettings
from server.memory.embedder import Embedder, open_embedder
from server.memory.query_encoder import builtin_query_encoder, is_held_out, load_pairs
from server.memory.service import MemoryService
from server.memory.store import memory_store
from server.storage import Location
from tests.conftest import free_port
from tests.memory_corpus import distractors as tuning_distractors
from tests.memory_corpus import labelled_facts
from tests.memory_testset import test_distractors, test_facts, test_sessions
from tests.postgres import new_database, postgres_cluster

OWNER = "eval"
DISTRACTORS = 2000
SESSION_DISTRACTORS = 600
KS = (1, 5, 10)
_WORD = re.compile(r"[a-z0-9]+")


def day(date: str) -> float:
    return datetime.fromisoformat(date).replace(hour=12, tzinfo=UTC).timestamp()


class BM25:
    def __init__(self, texts: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.docs = [Counter(_WORD.findall(text.lower())) for text in texts]
        self.lengths = np.array([sum(doc.values()) for doc in self.docs], dtype=np.float64)
        self.average = float(self.lengths.mean())
        frequency = Counter(word for doc in self.docs for word in doc)
        count = len(texts)
        self.idf = {word: math.log(1 + (count - n + 0.5) / (n + 0.5)) for word, n in frequency.items()}
        self.k1, self.b = k1, b

    def rank(self, query: str) -> list[int]:
        words = set(_WORD.findall(query.lower()))
        scores = np.zeros(len(self.docs))
        for index, doc in enumerate(self.docs):
            score = 0.0
            for word in words & doc.keys():
                tf = doc[word]
                norm = self.k1 * (1 - self.b + self.b * self.lengths[index] / self.average)
                score += self.idf[word] * tf * (self.k1 + 1) / (tf + norm)
            scores[index] = score
        order = np.argsort(-scores, kind="stable")
        return [int(i) for i in order if scores[i] > 0]


def recall_table(ranks: list[int | None]) -> dict:
    """ranks: 1-based rank of the first evidence memory, None if not in the top 10."""
    return {f"recall@{k}": round(sum(r is not None and r <= k for r in ranks) / len(ranks), 3) for k in KS} | {
        "empty": 0
    }


def first_rank(found: list[int], evidence: set[int]) -> int | None:
    for position, index in enumerate(found[: max(KS)], start=1):
        if index in evidence:
            return position
    return None


async def service_ranks(
    location: Location,
    embedder: Embedder,
    settings: MemorySettings,
    texts: list[str],
    dates: list[float] | None,
    questions: list[tuple[str, set[int], float | None, str]],
) -> tuple[list[int | None], int, list[float]]:
    """The service's rank of each question's evidence on the store at `location`; empty answers; latencies (ms)."""
    store = memory_store(location, embedder.dimensions)
    await store.open()
    service = MemoryService(store, embedder, settings)
    group = f"set-{uuid.uuid4().hex[:8]}"
    order = list(range(len(texts)))
    random.Random(7).shuffle(order)  # ids carry no hint of which memories are labelled
    by_position: dict[int, int] = {}
    try:
        for start in range(0, len(order), 256):
            chunk = order[start : start + 256]
            added = await service.add(
                OWNER,
                group,
                [texts[i] for i in chunk],
                None,
                "req_eval",
                said_at=[dates[i] for i in chunk] if dates else None,
            )
            for index, memory in zip(chunk, added, strict=True):
                by_position[memory.id] = index
        ranks, empty, latencies = [], 0, []
        for question, evidence, asked_at, _ in questions:
            started = time.perf_counter()
            hits = await service.search(OWNER, group, question, max(KS), now=asked_at)
            latencies.append((time.perf_counter() - started) * 1000)
            empty += not hits
            ranks.append(first_rank([by_position[hit.memory.id] for hit in hits], evidence))
    finally:
        await store.close()
    return ranks, empty, latencies


async def evaluate(
    embedder: Embedder,
    settings: MemorySettings,
    texts: list[str],
    dates: list[float] | None,
    questions: list[tuple[str, set[int], float | None, str]],
    postgres: str | None = None,
) -> dict:
    """texts[i] is memory i; questions: (question, evidence indexes, asked-at, type); `postgres`: a database URL
    to measure the PostgreSQL store on too (as `server-pg`)."""
    vectors = embedder.encode(texts)
    bm25 = BM25(texts)
    results: dict = {}
    served: dict[str, tuple[list[int | None], int, list[float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        served["server"] = await service_ranks(
            Path(folder) / "memory.sqlite3", embedder, settings, texts, dates, questions
        )
    if postgres is not None:
        served["server-pg"] = await service_ranks(postgres, embedder, settings, texts, dates, questions)
    cosine_ranks, encoder_ranks, bm25_ranks, types = [], [], [], []
    asked = [question for question, *_ in questions]
    query_vectors, encoder_vectors = embedder.encode(asked), embedder.encode_queries(asked)
    for (question, evidence, _, kind), query_vector, encoder_vector in zip(
        questions, query_vectors, encoder_vectors, strict=True
    ):
        cosine_ranks.append(first_rank([int(i) for i in np.argsort(-(vectors @ query_vector))], evidence))
        encoder_ranks.append(first_rank([int(i) for i in np.argsort(-(vectors @ encoder_vector))], evidence))
        bm25_ranks.append(first_rank(bm25.rank(question), evidence))
        types.append(kind)
    methods = {name: ranks for name, (ranks, _, _) in served.items()} | {
        "cosine": cosine_ranks,
        "q-cosine": encoder_ranks,
        "bm25": bm25_ranks,
    }
    for name, ranks in methods.items():
        table = recall_table(ranks)
        table["empty"] = served[name][1] if name in served else 0
        table["by_type_recall@5"] = {
            kind: round(
                sum(r is not None and r <= 5 for r, t in zip(ranks, types, strict=True) if t == kind)
                / types.count(kind),
                3,
            )
            for kind in sorted(set(types))
        }
        results[name] = table
    for name, (_, _, latencies) in served.items():
        results[name]["search_p50_ms"] = round(float(np.median(latencies)), 2)
    results["memories"], results["questions"] = len(texts), len(questions)
    results["misses_server@5"] = [
        question
        for (question, *_), rank in zip(questions, served["server"][0], strict=True)
        if rank is None or rank > 5
    ]
    return results


def tuning_facts_set() -> tuple[list[str], None, list]:
    facts = labelled_facts()
    texts = [fact.fact for fact in facts] + tuning_distractors(DISTRACTORS)
    return texts, None, [(fact.question, {i}, None, "tuning") for i, fact in enumerate(facts)]


def test_facts_set() -> tuple[list[str], None, list]:
    facts = test_facts()
    texts = [fact.fact for fact in facts] + test_distractors(DISTRACTORS)
    return texts, None, [(fact.question, {i}, None, fact.type) for i, fact in enumerate(facts)]


def session_sets() -> list[tuple[str, list[str], list[float], list]]:
    sets = []
    for number, conversation in enumerate(test_sessions()):
        texts = [turn.text for turn in conversation.turns]
        dates = [day(turn.date) for turn in conversation.turns]
        first, last = min(dates), max(dates)
        rng = random.Random(number)
        noise = test_distractors(SESSION_DISTRACTORS, seed=100 + number)
        texts += noise
        dates += [first - 60 * 86400 + rng.random() * (last - first + 60 * 86400) for _ in noise]
        position = {turn.id: i for i, turn in enumerate(conversation.turns)}
        questions = [
            (q.question, {position[e] for e in q.evidence}, day(q.date), q.type) for q in conversation.questions
        ]
        sets.append((conversation.group, texts, dates, questions))
    return sets


def query_dev_set() -> tuple[list[str], None, list]:
    pairs = [pair for pair in load_pairs() if is_held_out(pair)]
    texts = [pair.positive for pair in pairs] + [pair.negative for pair in pairs] + tuning_distractors(DISTRACTORS)
    return texts, None, [(pair.query, {i}, None, pair.kind) for i, pair in enumerate(pairs)]


def merge(parts: list[dict]) -> dict:
    """Question-weighted average of per-conversation results."""
    total = sum(part["questions"] for part in parts)
    merged: dict = {"memories": [part["memories"] for part in parts], "questions": total}
    for name in methods(parts[0]):
        merged[name] = {
            f"recall@{k}": round(sum(p[name][f"recall@{k}"] * p["questions"] for p in parts) / total, 3) for k in KS
        }
        merged[name]["empty"] = sum(p[name]["empty"] for p in parts)
        if "search_p50_ms" in parts[0][name]:
            merged[name]["search_p50_ms"] = round(float(np.median([p[name]["search_p50_ms"] for p in parts])), 2)
    merged["misses_server@5"] = [miss for part in parts for miss in part["misses_server@5"]]
    return merged


def methods(result: dict) -> list[str]:
    return [name for name in ("server", "server-pg", "cosine", "q-cosine", "bm25") if name in result]


async def main_async(sets: list[str], postgres: str | None = None) -> dict:
    settings = MemorySettings()
    embedder = open_embedder(settings)
    report: dict = {}
    try:
        if "tuning-facts" in sets:
            texts, dates, questions = tuning_facts_set()
            report["tuning-facts"] = await evaluate(embedder, settings, texts, dates, questions, postgres)
        if "test-facts" in sets:
            texts, dates, questions = test_facts_set()
            report["test-facts"] = await evaluate(embedder, settings, texts, dates, questions, postgres)
        if "test-sessions" in sets:
            parts = [await evaluate(embedder, settings, t, d, q, postgres) for _, t, d, q in session_sets()]
            report["test-sessions"] = merge(parts)
    finally:
        await embedder.close()
    if "query-dev" in sets:
        dev = Embedder(
            settings.embedding_model,
            query_dtype=settings.query_embedding_dtype,
            query_source=str(builtin_query_encoder(dev=True)),
        )
        try:
            report["query-dev"] = await evaluate(dev, settings, *query_dev_set())
        finally:
            await dev.close()
    return report


def print_table(report: dict) -> None:
    print(f"\n{'set':<15} {'method':<9} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'empty':>6}  questions / memories")
    for name, result in report.items():
        for method in methods(result):
            row = result[method]
            print(
                f"{name:<15} {method:<9} {row['recall@1']:>6.3f} {row['recall@5']:>6.3f} {row['recall@10']:>6.3f}"
                f" {row['empty']:>6}  {result['questions']} / {result['memories']}"
            )
        for method in methods(result):
            if "search_p50_ms" in result[method]:
                print(f"{'':<15} {method} search p50 {result[method]['search_p50_ms']:.1f} ms")
        print(f"{'':<15} server missed at 5: {result['misses_server@5']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "eval-memory.json")
    parser.add_argument("--sets", default="tuning-facts,test-facts,test-sessions")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--postgres", action="store_true", help="also measure the PostgreSQL store (a throwaway one)")
    where.add_argument("--database-url", help="also measure the PostgreSQL store, in this (empty) database")
    args = parser.parse_args()
    with ExitStack() as stack:
        url = args.database_url
        if args.postgres:
            url = new_database(stack.enter_context(postgres_cluster(free_port())))
        report = asyncio.run(main_async(args.sets.split(","), url))
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
