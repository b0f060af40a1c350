"""`make eval-guardrails`: precision, recall, F1 and check latency of each checker backend.

The labelled set is tests/data/guardrails_eval.jsonl (policy, output, violates?),
written by hand across eleven kinds of policy; the builtin checker never saw it.
Latency is one check of a 5-unit window (`sliding_window` 5 of `chunk_size` 10
stream chunks, about 50 tokens of the served model's output) plus the policy.

    python scripts/eval_guardrails.py [--backend classifier=builtin:policy-guard ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from transformers import AutoTokenizer

from server.config import GuardrailSettings, load_settings
from server.guardrails.checker import Checker, checker_model_path, open_checker
from server.guardrails.training import LabelledCase, load_cases

ROOT = Path(__file__).resolve().parent.parent
EVAL_PATH = ROOT / "tests" / "data" / "guardrails_eval.jsonl"
WINDOW_TOKENS = 50  # sliding_window 5 x chunk_size 10: one token per stream chunk
LATENCY_CHECKS = 100


def scores_table(cases: list[LabelledCase], flagged: list[bool]) -> dict:
    tp = sum(1 for case, flag in zip(cases, flagged) if flag and case.violates)
    fp = sum(1 for case, flag in zip(cases, flagged) if flag and not case.violates)
    fn = sum(1 for case, flag in zip(cases, flagged) if not flag and case.violates)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    by_category: dict[str, list[bool]] = defaultdict(list)
    for case, flag in zip(cases, flagged):
        by_category[case.category].append(flag == case.violates)
    return {
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "f1": round(f1, 3),
        "accuracy_by_category": {name: round(sum(hits) / len(hits), 2) for name, hits in sorted(by_category.items())},
    }


def stream_windows(cases: list[LabelledCase], tokenizer_source: str) -> list[tuple[str, str]]:
    """(policy, window): 50 tokens of text cut the way a stream window is, from the set's own outputs."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    ids = tokenizer.encode(" ".join(case.text for case in cases), add_special_tokens=False)
    step = max(1, (len(ids) - WINDOW_TOKENS) // LATENCY_CHECKS)
    return [
        (cases[index % len(cases)].policy, tokenizer.decode(ids[start : start + WINDOW_TOKENS]))
        for index, start in enumerate(range(0, step * LATENCY_CHECKS, step))
    ]


async def evaluate(checker: Checker, cases: list[LabelledCase], windows: list[tuple[str, str]]) -> dict:
    flagged = []
    for case in cases:
        flagged.append((await checker.check(case.policy, case.text)).flagged)
    latencies = []
    for policy, window in windows:
        started = time.perf_counter()
        await checker.check(policy, window)
        latencies.append((time.perf_counter() - started) * 1000)
    return scores_table(cases, flagged) | {
        "check_p50_ms": round(statistics.median(latencies), 1),
        "check_p90_ms": round(statistics.quantiles(latencies, n=10)[-1], 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        action="append",
        metavar="KIND=MODEL",
        help="a backend to evaluate (repeatable); default: the one models.yaml configures",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "guardrails-eval.json")
    args = parser.parse_args()
    server_settings = load_settings()
    settings, served = server_settings.guardrails, server_settings.served
    backends = [spec.split("=", 1) for spec in args.backend] if args.backend else [(settings.backend, settings.model)]
    cases = load_cases(EVAL_PATH)
    windows = stream_windows(cases, str(Path(served.source).expanduser()))
    results = {}
    for kind, model in backends:
        config = GuardrailSettings(**(settings.model_dump() | {"backend": kind, "model": model}))
        checker = open_checker(config, checker_model_path(model))
        results[f"{kind}:{model}"] = await evaluate(checker, cases, windows)
        await checker.close()
    print(
        f"{len(cases)} labelled cases ({sum(case.violates for case in cases)} violating), threshold {settings.threshold}"
    )
    print(f"{'backend':<48} {'precision':>9} {'recall':>7} {'F1':>6} {'p50 ms':>7} {'p90 ms':>7}")
    for name, row in results.items():
        print(
            f"{name:<48} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} "
            f"{row['check_p50_ms']:>7.1f} {row['check_p90_ms']:>7.1f}"
        )
        print("    accuracy by category:", ", ".join(f"{k} {v:.2f}" for k, v in row["accuracy_by_category"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cases": len(cases), "backends": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
