"""`make eval-guardrails`: precision, recall, F1 per kind of policy and check latency of the guardrail checker.

Two labelled sets (policy, output, violates?):
- dev:  tests/data/guardrails_eval.jsonl, written together with the training data; thresholds are
  chosen on it (and only on it), so its figures are optimistic;
- test: tests/data/guardrails_test.jsonl, written apart and first (other voices, policy wordings and
  kinds the training data lacks: violence, politics; multi-sentence outputs, negations, near-misses,
  paraphrased violations), frozen before any tuning and never tuned on: the figure to trust.

Candidates, each on both sets: plain baselines (flag everything; flag a text sharing a content word
with its policy), the evidence alone (`evidence.py`), the model alone at 0.5 and at its threshold
chosen on dev, and the ensemble (evidence first, then the model on the own-brand-masked text) at
0.5 and at its dev threshold: the last one is what the server runs with `threshold` set to it.
Latency is one check through the real `Checker` of a stream window (about 50 tokens of output,
`sliding_window` 5 of `chunk_size` 10) plus its policy.

The served model's own outputs (`build_model_output_sets.py`: its answers under business system prompts, each
with several policies, labelled by reading them), scored as two sets each: whole answers and stream prefixes
(the text after 1, 3, 7, 15 chunks, what a stream's first checks read):
- model-dev: scripts/data/guardrails_model_outputs_dev.jsonl, its whole answers join dev in choosing thresholds;
- model-test: tests/data/guardrails_model_outputs_test.jsonl, other businesses and policy wordings, never tuned on.
For them the false-positive rate (clean texts flagged / clean texts) is printed beside P/R/F1, and each whole
answer is replayed as a stream through the real stream guard (`stream.guarded`, the configured checker, default
units): streams cut, clean and violating, with the short-window rule at several word counts (0: off).

    python scripts/eval_guardrails.py [--backend classifier=builtin:policy-guard ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from transformers import AutoTokenizer

from server.config import GuardrailSettings, load_settings
from server.engine import CompletionDelta
from server.guardrails.checker import PairScorer, calibrated, checker_model_path, open_checker, open_scorer
from server.guardrails.errors import GuardrailViolation
from server.guardrails.evidence import Evidence, evidence, masked_own_brand, policy_terms, sentences
from server.guardrails.kinds import kind_threshold, policy_kind
from server.guardrails.stream import CONTENT_FILTER, MIN_JUDGED_WORDS, guarded
from server.guardrails.topics import TopicJudge, allowed_topic
from server.guardrails.training import LabelledCase, load_cases
from server.memory.embedder import Embedder

ROOT = Path(__file__).resolve().parent.parent
SETS = {
    "dev": ROOT / "tests" / "data" / "guardrails_eval.jsonl",
    "test": ROOT / "tests" / "data" / "guardrails_test.jsonl",
}
MODEL_OUTPUT_SETS = {
    "model-dev": ROOT / "scripts" / "data" / "guardrails_model_outputs_dev.jsonl",
    "model-test": ROOT / "tests" / "data" / "guardrails_model_outputs_test.jsonl",
}
FORMS = {"answer": "answers", "prefix": "prefixes"}
TUNING = ("dev", "model-dev answers")  # the sets thresholds are chosen on
STREAM_MIN_WORDS = (0, 4, 6, MIN_JUDGED_WORDS, 12)  # the short-window rule's word counts replayed (0: off)
STREAM_UNITS = (10, 5)  # the default chunk_size, sliding_window
WINDOW_TOKENS = 50  # sliding_window 5 x chunk_size 10: one token per stream chunk
LATENCY_CHECKS = 200
MIN_KIND_CASES = 8  # a kind with fewer dev cases (or only one label among them) keeps the global threshold
SCORE_BATCH = 32
STOPWORDS = frozenset(
    [
        "about",
        "after",
        "also",
        "always",
        "answer",
        "any",
        "been",
        "before",
        "being",
        "does",
        "doing",
        "don't",
        "every",
        "from",
        "have",
        "into",
        "just",
        "more",
        "most",
        "never",
        "only",
        "other",
        "over",
        "reply",
        "replies",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "user",
        "users",
        "very",
        "what",
        "when",
        "which",
        "while",
        "will",
        "with",
        "would",
        "your",
    ]
)


def prf(flags: list[bool], labels: list[bool]) -> dict:
    tp = sum(f and y for f, y in zip(flags, labels))
    fp = sum(f and not y for f, y in zip(flags, labels))
    fn = sum(y and not f for f, y in zip(flags, labels))
    clean = len(labels) - sum(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": len(labels),
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "f1": round(f1, 3),
        "false_positives": fp,
        "clean": clean,
        "fp_rate": round(fp / clean, 3) if clean else 0.0,
    }


def model_output_sets(wanted: set[str]) -> tuple[dict[str, list[LabelledCase]], dict[str, list[dict]]]:
    """The model-output sets, each split into whole answers and prefixes (LabelledCase), and their raw rows."""
    sets: dict[str, list[LabelledCase]] = {}
    rows: dict[str, list[dict]] = {}
    for name, path in MODEL_OUTPUT_SETS.items():
        if name not in wanted or not path.exists():
            continue
        loaded = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for form, plural in FORMS.items():
            picked = [row for row in loaded if row["form"] == form]
            rows[f"{name} {plural}"] = picked
            sets[f"{name} {plural}"] = [
                LabelledCase(row["policy"], row["text"], row["violates"], row["category"]) for row in picked
            ]
    return sets, rows


async def replayed_stream(checker, policy: str, chunks: list[str], min_words: int) -> tuple[bool, int]:
    """(cut?, chunks read before the first release): the answer streamed through the stream guard."""

    async def deltas():
        for text in chunks:
            yield CompletionDelta(0, text, 1, None)
        yield CompletionDelta(0, "", 0, "stop")

    read = 0
    released_after = len(chunks)
    source = deltas()

    async def counted():
        nonlocal read
        async for delta in source:
            read += 1
            yield delta

    check = functools.partial(checker.check, policy)
    stream = guarded(counted(), check, *STREAM_UNITS, min_judged_words=min_words)
    cut = False
    try:
        async for delta in stream:
            if delta.finish_reason == CONTENT_FILTER:
                cut = True
            elif delta.text and released_after == len(chunks):
                released_after = read
    except GuardrailViolation:
        cut = True
    return cut, released_after


async def stream_replays(
    settings: GuardrailSettings, model: str, scorer: PairScorer, topics: TopicJudge, rows: dict[str, list[dict]]
) -> dict:
    """Per model-output answer set and rule word count: clean streams cut, violating streams cut, and the median
    chunks read before the first release."""
    checker = open_checker(settings, model, scorer, topics)
    out: dict = {}
    try:
        for name, picked in rows.items():
            if not name.endswith(FORMS["answer"]):
                continue
            out[name] = {}
            for min_words in STREAM_MIN_WORDS:
                results = [await replayed_stream(checker, row["policy"], row["chunks"], min_words) for row in picked]
                clean = [cut for (cut, _), row in zip(results, picked) if not row["violates"]]
                bad = [cut for (cut, _), row in zip(results, picked) if row["violates"]]
                out[name][min_words] = {
                    "clean_cut": sum(clean),
                    "clean": len(clean),
                    "violating_cut": sum(bad),
                    "violating": len(bad),
                    "first_release_chunks_p50": statistics.median([first for _, first in results]),
                }
    finally:
        await checker.close()
    return out


def replay_settings(settings: GuardrailSettings, result: dict) -> GuardrailSettings:
    """`settings` with the global (evidence + model) and per-kind thresholds `evaluate_backend` chose on dev."""
    chosen = {
        "threshold": result["thresholds_chosen_on_dev"]["ensemble"],
        "kind_thresholds": result["kind_thresholds_chosen_on_dev"],
    }
    return GuardrailSettings(**(settings.model_dump() | chosen))


def scores_table(cases: list[LabelledCase], flags: list[bool]) -> dict:
    """Precision, recall and F1 overall and per kind of policy."""
    labels = [case.violates for case in cases]
    by_kind: dict[str, list[int]] = defaultdict(list)
    for index, case in enumerate(cases):
        by_kind[case.category].append(index)
    return prf(flags, labels) | {
        "by_kind": {
            kind: prf([flags[i] for i in indices], [labels[i] for i in indices])
            for kind, indices in sorted(by_kind.items())
        }
    }


def content_words(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z']{4,}", text.lower()) if word not in STOPWORDS}


def keyword_flag(case: LabelledCase) -> bool:
    """Plain baseline: the text shares a content word with its policy."""
    return bool(content_words(case.policy) & content_words(case.text))


def best_threshold(scores: list[float], labels: list[bool], prefer: float = 0.5) -> float:
    """The threshold with the highest F1 (ties: the one nearest `prefer`)."""
    grid = [step / 100 for step in range(2, 99)]
    return max(grid, key=lambda t: (prf([s >= t for s in scores], labels)["f1"], -abs(t - prefer)))


def kind_thresholds(
    cases: list[LabelledCase], scores: list[float], default: float, min_cases: int = MIN_KIND_CASES
) -> dict[str, float]:
    """Per kind of policy (inferred from its words, as the server does), the best threshold on these cases;
    a kind with fewer than `min_cases` of them, or with one label only, gets none (it keeps `default`).
    Ties go to the threshold nearest `default`: a kind whose cases do not tell thresholds apart keeps it."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for index, case in enumerate(cases):
        by_kind[policy_kind(case.policy)].append(index)
    chosen = {}
    for kind, indices in sorted(by_kind.items()):
        labels = [cases[i].violates for i in indices]
        if len(indices) >= min_cases and any(labels) and not all(labels):
            chosen[kind] = best_threshold([scores[i] for i in indices], labels, prefer=default)
    return chosen


def model_scores(scorer: PairScorer, pairs: list[tuple[str, str]]) -> list[float]:
    scores: list[float] = []
    for start in range(0, len(pairs), SCORE_BATCH):
        scores += scorer.score_pairs(pairs[start : start + SCORE_BATCH])
    return scores


async def ensemble_scores(cases: list[LabelledCase], masked: list[float], topics: TopicJudge | None) -> list[float]:
    """Evidence decides where it speaks (1.0 / 0.0), then (with `topics`) an off-topic sentence under an
    "only X" policy (1.0), the model's raw score elsewhere: what the server's `Checker` does."""
    out = []
    for case, score in zip(cases, masked):
        found = evidence(policy_terms(case.policy), case.text)
        if found is not None:
            out.append(float(found.evidence is Evidence.VIOLATES))
        elif (
            topics is not None
            and (topic := allowed_topic(case.policy))
            and (await topics.off_topic(topic, [case.text]))[0]
        ):
            out.append(1.0)
        else:
            out.append(score)
    return out


def stream_windows(cases: list[LabelledCase], tokenizer_source: str) -> list[tuple[str, str]]:
    """(policy, window): 50 tokens of text cut the way a stream window is, from the sets' own outputs."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    ids = tokenizer.encode(" ".join(case.text for case in cases), add_special_tokens=False)
    step = max(1, (len(ids) - WINDOW_TOKENS) // LATENCY_CHECKS)
    return [
        (cases[index % len(cases)].policy, tokenizer.decode(ids[start : start + WINDOW_TOKENS]))
        for index, start in enumerate(range(0, step * LATENCY_CHECKS, step))
    ]


async def check_latency(
    settings: GuardrailSettings, model: str, scorer: PairScorer, topics: TopicJudge, windows: list
) -> dict:
    checker = open_checker(settings, model, scorer, topics)
    latencies = []
    try:
        for policy, window in windows:
            started = time.perf_counter()
            await checker.check(policy, window)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        await checker.close()
    return {
        "check_p50_ms": round(statistics.median(latencies), 1),
        "check_p99_ms": round(statistics.quantiles(latencies, n=100)[-1], 1),
    }


async def evaluate_backend(
    settings: GuardrailSettings, scorer: PairScorer, topics: TopicJudge, sets: dict[str, list[LabelledCase]]
) -> dict:
    """Every candidate on every set; thresholds chosen on dev only."""
    raw: dict[str, dict[str, list[float]]] = {}
    for name, cases in sets.items():
        plain = model_scores(scorer, [(case.policy, case.text) for case in cases])
        masked = model_scores(
            scorer, [(case.policy, masked_own_brand(policy_terms(case.policy), case.text)) for case in cases]
        )
        raw[name] = {
            "model": plain,
            "ensemble": await ensemble_scores(cases, masked, topics),
            "no_topics": await ensemble_scores(cases, masked, None),
        }
        # candidate: the worst of the whole text and each of its sentences (a violation diluted in a long text)
        pieces = [sentences(masked_own_brand(policy_terms(case.policy), case.text)) for case in cases]
        flat = model_scores(scorer, [(case.policy, piece) for case, parts in zip(cases, pieces) for piece in parts])
        worst, offset = [], 0
        for whole, parts in zip(masked, pieces):
            worst.append(max([whole, *flat[offset : offset + len(parts)]]))
            offset += len(parts)
        raw[name]["sentences"] = await ensemble_scores(cases, worst, topics)
    tuning = [name for name in TUNING if name in sets]
    tuning_cases = [case for name in tuning for case in sets[name]]
    tuning_labels = [case.violates for case in tuning_cases]
    thresholds = {
        kind: best_threshold([score for name in tuning for score in raw[name][kind]], tuning_labels)
        for kind in ("model", "no_topics", "ensemble", "sentences")
    }
    per_kind = kind_thresholds(
        tuning_cases, [score for name in tuning for score in raw[name]["ensemble"]], thresholds["ensemble"]
    )
    kinds = {name: [policy_kind(case.policy) for case in cases] for name, cases in sets.items()}
    candidates: dict[str, Callable[[str, int], bool]] = {
        "baseline: flag everything": lambda _name, _i: True,
        "baseline: shares a word with the policy": lambda name, i: keyword_flag(sets[name][i]),
        "evidence alone": lambda name, i: (
            (found := evidence(policy_terms(sets[name][i].policy), sets[name][i].text)) is not None
            and found.evidence is Evidence.VIOLATES
        ),
        "model @0.5": lambda name, i: raw[name]["model"][i] >= 0.5,
        f"model @{thresholds['model']:.2f} (dev)": lambda name, i: raw[name]["model"][i] >= thresholds["model"],
        f"evidence + model, no topic evidence @{thresholds['no_topics']:.2f} (dev)": lambda name, i: (
            raw[name]["no_topics"][i] >= thresholds["no_topics"]
        ),
        "evidence + model @0.5": lambda name, i: raw[name]["ensemble"][i] >= 0.5,
        f"evidence + model @{thresholds['ensemble']:.2f} (dev)": lambda name, i: (
            raw[name]["ensemble"][i] >= thresholds["ensemble"]
        ),
        f"evidence + model, worst sentence @{thresholds['sentences']:.2f} (dev)": lambda name, i: (
            raw[name]["sentences"][i] >= thresholds["sentences"]
        ),
        "evidence + model, per-kind thresholds (dev)": lambda name, i: (
            raw[name]["ensemble"][i] >= kind_threshold(kinds[name][i], per_kind, thresholds["ensemble"])
        ),
        f"configured (evidence {'on' if settings.evidence else 'off'}, threshold {settings.threshold}, "
        f"{len(settings.kind_thresholds)} per kind)": lambda name, i: (
            calibrated(
                raw[name]["ensemble" if settings.evidence else "model"][i],
                kind_threshold(kinds[name][i], settings.kind_thresholds, settings.threshold),
            )
            >= 0.5
        ),
    }
    results = {
        candidate: {
            name: scores_table(cases, [flag(name, i) for i in range(len(cases))]) for name, cases in sets.items()
        }
        for candidate, flag in candidates.items()
    }
    inferred = {
        name: {
            "agreement": round(sum(k == c.category for k, c in zip(kinds[name], cases)) / len(cases), 3),
            "inferred": dict(sorted(Counter(kinds[name]).items())),
        }
        for name, cases in sets.items()
    }
    return {
        "tuning_sets": tuning,
        "thresholds_chosen_on_dev": thresholds,
        "kind_thresholds_chosen_on_dev": per_kind,
        "inferred_kinds": inferred,
        "candidates": results,
    }


def print_backend(name: str, result: dict, latency: dict) -> None:
    print(f"\n== {name}: check p50 {latency['check_p50_ms']} ms, p99 {latency['check_p99_ms']} ms")
    print(f"thresholds chosen on dev ({' + '.join(result['tuning_sets'])}): {result['thresholds_chosen_on_dev']}")
    print(
        f"per-kind thresholds chosen on dev (models.yaml guardrails.kind_thresholds): {result['kind_thresholds_chosen_on_dev']}"
    )
    for set_name, inferred in result["inferred_kinds"].items():
        print(
            f"kinds inferred from the policies, {set_name}: {inferred['inferred']} (same as the labelled kind: {inferred['agreement']})"
        )
    every_set = list(next(iter(result["candidates"].values())))
    scored = [n for n in every_set if n in SETS]  # the hand-written sets scored: dev, and test unless left out
    print(f"{'candidate':<62}" + "".join(f" {name + ' P':>6} {'R':>6} {'F1':>6}  " for name in scored))
    for candidate, sets in result["candidates"].items():
        print(
            f"{candidate:<62}"
            + "".join(
                f" {sets[n]['precision']:>6.3f} {sets[n]['recall']:>6.3f} {sets[n]['f1']:>6.3f}  " for n in scored
            )
        )
    candidates = result["candidates"]
    configured = next(sets for candidate, sets in candidates.items() if candidate.startswith("configured"))
    global_name = next(
        candidate for candidate in candidates if re.match(r"evidence \+ model @0\.\d+ \(dev\)", candidate)
    )
    model_sets = [n for n in every_set if n not in SETS]
    if model_sets:
        print("\nthe served model's own outputs (FP: clean texts flagged / clean texts; P R F1 where violations)")
        print(f"{'candidate':<62}" + "".join(f" | {n:<30}" for n in model_sets))
        for candidate, sets in result["candidates"].items():
            cells = []
            for n in model_sets:
                row = sets[n]
                fp = f"FP {row['false_positives']:>3}/{row['clean']:<3} {row['fp_rate']:.3f}"
                prf_cells = (
                    f"{row['precision']:.2f} {row['recall']:.2f} {row['f1']:.2f}" if row["n"] > row["clean"] else ""
                )
                cells.append(f" | {fp} {prf_cells:<14}")
            print(f"{candidate:<62}" + "".join(cells))
    for set_name in [n for n in configured if n in SETS]:
        print(f"per labelled kind, {set_name}:  kind n   configured P R F1   ({global_name}: F1)")
        for kind, row in configured[set_name]["by_kind"].items():
            plain = candidates[global_name][set_name]["by_kind"][kind]["f1"]
            print(
                f"    {kind:<18} {row['n']:>3} {row['precision']:>6.3f} {row['recall']:>6.3f} {row['f1']:>6.3f}"
                f"   ({plain:.3f})"
            )


def print_replays(replays: dict) -> None:
    if not replays:
        return
    units = f"chunk_size {STREAM_UNITS[0]}, sliding_window {STREAM_UNITS[1]}"
    print(f"\nwhole answers replayed as streams through the stream guard ({units}); min words: the short-window rule")
    print(f"{'set':<26} {'min words':>9} {'clean cut':>12} {'violating cut':>14} {'first release p50 (chunks)':>27}")
    for name, by_words in replays.items():
        for min_words, row in by_words.items():
            print(
                f"{name:<26} {min_words:>9} {row['clean_cut']:>5} of {row['clean']:<4} "
                f"{row['violating_cut']:>6} of {row['violating']:<4} {row['first_release_chunks_p50']:>27}"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        action="append",
        metavar="KIND=MODEL",
        help="a backend to evaluate (repeatable); default: the one models.yaml configures",
    )
    parser.add_argument(
        "--sets",
        default="dev,test,model-dev,model-test",
        help="comma-separated sets to score (thresholds are always chosen on dev and model-dev); "
        "`dev,model-dev` while tuning",
    )
    parser.add_argument(
        "--replay-thresholds",
        choices=("configured", "chosen"),
        default="configured",
        help="thresholds the streams are replayed with: models.yaml's, or the global and per-kind ones this run "
        "chose on dev + model-dev (a retrained checker before its thresholds are in models.yaml)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "guardrails-eval.json")
    args = parser.parse_args()
    server_settings = load_settings()
    settings, served = server_settings.guardrails, server_settings.served
    backends = [spec.split("=", 1) for spec in args.backend] if args.backend else [(settings.backend, settings.model)]
    wanted = {name.strip() for name in args.sets.split(",")} | {"dev"}
    sets = {name: load_cases(path) for name, path in SETS.items() if name in wanted}
    extra_sets, model_rows = model_output_sets(wanted)
    sets |= extra_sets
    for name, cases in sets.items():
        print(f"{name}: {len(cases)} cases ({sum(case.violates for case in cases)} violating)")
    hand_written = [case for name, cases in sets.items() if name in SETS for case in cases]
    windows = stream_windows(hand_written, str(Path(served.source).expanduser()))
    memory = server_settings.memory  # the server's memory embedder, as the server's checker uses it
    embedder = Embedder(memory.embedding_model, query_dtype=memory.query_embedding_dtype)
    topics = await TopicJudge.open(embedder.embed_short)
    results = {}
    for kind, model in backends:
        config = GuardrailSettings(**(settings.model_dump() | {"backend": kind, "model": model}))
        path = checker_model_path(model)
        scorer = open_scorer(config, path)
        result = await evaluate_backend(config, scorer, topics, sets)
        latency = await check_latency(config, path, scorer, topics, windows)
        if args.replay_thresholds == "chosen":
            config = replay_settings(config, result)
            print(f"streams replayed at the thresholds chosen here: {config.threshold}, {config.kind_thresholds}")
        replays = await stream_replays(config, path, scorer, topics, model_rows)
        results[f"{kind}:{model}"] = result | latency | {"stream_replays": replays}
        print_backend(f"{kind}:{model}", result, latency)
        print_replays(replays)
    await embedder.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"sets": {k: len(v) for k, v in sets.items()}, "backends": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
