"""Adaption benchmark: does self-fine-tuning teach? (`make bench` section `adaption`, or run alone.)

End to end on the served model, through the seed's request fields only: for
each fact count (8, 20, 50 by default) a new memory group is told that many
facts about the user through chat (`nightly`, `finetune_thresh` = the count,
`min_finetune_group`, `lora_name`), which queues a fine-tuning job. Once the
job is done:

- recall: every fact is asked about in three hand-written questions
  (tests/data/adaption_facts.jsonl, written apart from the training templates
  and never trained on), memory off, temperature 0, with `lora_name` +
  `adaption_inference` (the promoted version) and without (the base model);
  an answer counts when it names the fact's value;
- the general set: the job's own figures (loss on the shipped general set, new
  version vs base model, and the tolerance from models.yaml);
- training time: the job's wall time, and the worker's training seconds;
- serving throughput while the largest job trains vs idle, same load.

    python scripts/bench_adaption.py [--counts 8,20,50] [--out bench-results]
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FACTS = ROOT / "tests" / "data" / "adaption_facts.jsonl"
GOAL = "A personal assistant that remembers what the user tells it"


def bench_facts(path: Path = FACTS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def names(answer: str, value: str) -> bool:
    return value.lower() in answer.lower()


def ask(client: httpx.Client, model: str, question: str, extra: dict) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 32,
        "temperature": 0,
        **extra,
    }
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"] or ""


def recall(client: httpx.Client, model: str, facts: list[dict], extra: dict) -> dict:
    asked = [(fact, question) for fact in facts for question in fact["questions"]]
    hits = [names(ask(client, model, question, extra), fact["value"]) for fact, question in asked]
    return {"recalled": sum(hits), "asked": len(hits), "recall": round(sum(hits) / len(hits), 3)}


def tell(client: httpx.Client, model: str, facts: list[dict], group: str, adapter: str) -> None:
    """The seed's way: each fact told in a chat turn with `nightly` and the fine-tuning trigger."""
    trigger = {
        "nightly": [group, GOAL],
        "finetune_thresh": len(facts),
        "min_finetune_group": 5,
        "lora_name": adapter,
    }
    for fact in facts:
        body = {"model": model, "messages": [{"role": "user", "content": fact["fact"]}], "max_tokens": 16, **trigger}
        client.post("/v1/chat/completions", json=body).raise_for_status()


def wait_for_job(client: httpx.Client, adapter: str, timeout_s: float, while_running: Callable[[], dict] | None):
    """The adapter's job once it has finished; `while_running()` is measured once while it trains."""
    deadline = time.monotonic() + timeout_s
    measured = None
    while time.monotonic() < deadline:
        jobs = [j for j in client.get("/v1/fine_tuning/jobs").json()["data"] if j["metadata"]["lora_name"] == adapter]
        if jobs and jobs[0]["status"] in ("succeeded", "failed", "cancelled"):
            return jobs[0], measured
        if jobs and jobs[0]["status"] == "running" and while_running is not None and measured is None:
            measured = while_running()
            still = client.get(f"/v1/fine_tuning/jobs/{jobs[0]['id']}").json()["status"] == "running"
            measured = {**measured, "job_running_throughout": still}
        time.sleep(1)
    raise TimeoutError(f"the fine-tuning job of {adapter} did not finish in {timeout_s:.0f}s")


def recall_end_to_end(
    base_url: str,
    api_key: str,
    model: str,
    counts: list[int],
    measure: Callable[[], dict] | None = None,
    timeout_s: float = 3600,
    facts_path: Path = FACTS,
) -> dict:
    """Tell facts, wait for the triggered job, ask the hand-written questions with and without the adapter."""
    headers = {"Authorization": f"Bearer {api_key}"}
    facts = bench_facts(facts_path)
    report: dict = {
        "facts_file": str(facts_path.relative_to(ROOT) if facts_path.is_relative_to(ROOT) else facts_path),
        "runs": [],
    }
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
        if measure is not None:
            report["serving_idle"] = measure()
        for count in counts:
            chosen = facts[:count]
            tag = uuid.uuid4().hex[:6]
            group, adapter = f"bench-facts-{count}-{tag}", f"bench-facts-{count}-{tag}"
            told = time.monotonic()
            tell(client, model, chosen, group, adapter)
            print(f"adaption: told {count} facts in {time.monotonic() - told:.0f}s; waiting for the job", flush=True)
            queued = time.monotonic()
            last = count == max(counts)
            job, serving = wait_for_job(client, adapter, timeout_s, measure if last else None)
            job_wall = time.monotonic() - queued
            result = job.get("result") or {}
            run = {
                "facts": count,
                "job_status": job["status"],
                "promoted": job["metadata"]["promoted"] == "true",
                "error": job.get("error"),
                "job_wall_s": round(job_wall, 1),
                "train_seconds": result.get("train_seconds"),
                "train_examples": result.get("train_examples"),
                "probe_recall": result.get("recall"),
                "probe_recall_base": result.get("baseline_recall"),
                "general_correct": result.get("general_correct"),
                "general_correct_base": result.get("baseline_general_correct"),
                "general_examples": result.get("general_examples"),
                "general_loss_tolerance": result.get("general_loss_tolerance"),
                "general_loss": result.get("general_loss"),
                "general_loss_base": result.get("baseline_general_loss"),
                "verdict": result.get("verdict"),
                "base": recall(client, model, chosen, {}),
                "adapter": recall(client, model, chosen, {"lora_name": adapter, "adaption_inference": True}),
            }
            if serving is not None:
                report["serving_training"] = serving
            report["runs"].append(run)
            print(
                f"adaption: {count} facts: adapter {run['adapter']['recall']:.0%} vs base {run['base']['recall']:.0%}"
                f" ({job['status']}, promoted {run['promoted']}, job {job_wall:.0f}s)",
                flush=True,
            )
    if "serving_idle" in report and "serving_training" in report:
        report["throughput_ratio_training_over_idle"] = round(
            report["serving_training"]["output_tok_per_s"] / report["serving_idle"]["output_tok_per_s"], 3
        )
    return report


def print_adaption_table(report: dict) -> None:
    print(
        "\nadaption: facts told through chat -> triggered job -> recall on hand-written questions (memory off;"
        f" {report.get('facts_file', 'tests/data/adaption_facts.jsonl')})"
    )
    print(
        f"  {'facts':>5} {'adapter':>8} {'base':>6} {'promoted':>8} {'general right (base) / loss (base)':>36}"
        f" {'train s':>8} {'job s':>7} {'examples':>8}"
    )
    for run in report["runs"]:
        general = (
            f"{run['general_correct']}/{run['general_examples']} ({run['general_correct_base']})"
            f" / {run['general_loss']:.3f} ({run['general_loss_base']:.3f})"
            if run["general_loss"] is not None
            else "-"
        )
        print(
            f"  {run['facts']:>5} {run['adapter']['recall']:>8.0%} {run['base']['recall']:>6.0%}"
            f" {run['promoted']!s:>8} {general:>36} {run['train_seconds'] or 0:>8.0f} {run['job_wall_s']:>7.0f}"
            f" {run['train_examples'] or 0:>8}"
        )
    if "throughput_ratio_training_over_idle" in report:
        print(
            f"serving during training: {report['serving_training']['output_tok_per_s']:.1f} vs idle"
            f" {report['serving_idle']['output_tok_per_s']:.1f} tok/s (ratio {report['throughput_ratio_training_over_idle']:.3f};"
            f" job running throughout: {report['serving_training']['job_running_throughout']})"
        )


def main() -> None:
    import argparse
    import asyncio
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    from bench import API_KEY, ready_server, run_level

    from server.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="8,20,50")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument(
        "--facts",
        type=Path,
        default=FACTS,
        help="facts and questions (JSONL); tuning uses the dev set scripts/data/adaption_dev_facts.jsonl, the"
        " reported figure the test set (the default)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    entry = load_settings().served
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"logs-adaption-{stamp}"
    log_dir.mkdir(parents=True)
    with ready_server("ours-adaption", entry, log_dir, log_dir / "data") as server:

        def measure() -> dict:
            return asyncio.run(run_level(server.base_url, [entry.name], 4, 8, args.output_tokens)).summary()

        counts = [int(part) for part in args.counts.split(",")]
        report = recall_end_to_end(
            server.base_url, API_KEY, entry.name, counts, measure, facts_path=args.facts.resolve()
        )
    print_adaption_table(report)
    path = args.out / f"bench-adaption-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
