"""`make eval-memory` (chat part): is the remembered fact named in the chat answer? (issue 14 item 7)

The real server on the embedded model. The TEST facts (tests/memory_testset.py, never tuned on) and 2,000 test
distractors (or, with `--set tuning`, the tuning set's: tests/memory_corpus.py) are told through the memory API
into one group; each question is then asked by chat with `nightly`
on that group, temperature 0, and an answer counts when it contains the fact's answer word. Beside it, on the
same questions and server:
- no memory: the same chat without `nightly` (what the model guesses);
- evidence only: a group holding only that question's fact (retrieval made perfect: what the model makes of
  the right memory).
The gap between "evidence only" and "memory" is retrieval's; what "evidence only" misses is the model's.

    python scripts/eval_memory_chat.py [--set test|tuning] [--out bench-results/eval-memory-chat-SET.json]
        [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import API_KEY, parse_overrides, ready_server, variant_config

from server.config import load_settings
from tests.memory_corpus import distractors, labelled_facts
from tests.memory_testset import test_distractors, test_facts

DISTRACTORS = 2000
BATCH = 256  # the memory API's most texts per request
GOAL = "A personal assistant that remembers what the user tells it"


def names_answer(reply: str, answer: str) -> bool:
    return answer.lower() in reply.lower()


def tell(http: httpx.Client, group: str, texts: list[str]) -> None:
    for start in range(0, len(texts), BATCH):
        response = http.post(f"/v1/memory/{group}/memories", json={"text": texts[start : start + BATCH]})
        response.raise_for_status()


def ask(client: openai.OpenAI, model: str, question: str, group: str | None) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=48,
        extra_body={"nightly": [group, GOAL]} if group else None,
    )
    return reply.choices[0].message.content or ""


@dataclass(frozen=True)
class Question:
    fact: str
    question: str
    answer: str
    type: str


def question_set(name: str) -> tuple[list[Question], list[str]]:
    """The facts (with their questions and answer words) and the distractors of the test or the tuning set."""
    if name == "test":
        return [Question(f.fact, f.question, f.answer, f.type) for f in test_facts()], test_distractors(DISTRACTORS)
    return [Question(f.fact, f.question, f.answer, "tuning") for f in labelled_facts()], distractors(DISTRACTORS)


METHODS = ("memory", "no memory", "evidence only")


def evaluate(
    base_url: str, model: str, facts: list[Question], distractor_texts: list[str], methods: tuple[str, ...] = METHODS
) -> dict:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600) as http:
        shared = f"eval-chat-{uuid.uuid4().hex[:8]}"
        # Distractors first, facts last: a fact is never replaced by a distractor written after it.
        tell(http, shared, distractor_texts)
        tell(http, shared, [fact.fact for fact in facts])
        rows = []
        for number, fact in enumerate(facts):
            alone = f"{shared}-evidence-{number}"
            if "evidence only" in methods:
                tell(http, alone, [fact.fact])
            groups = {"memory": shared, "no memory": None, "evidence only": alone}
            replies = {method: ask(client, model, fact.question, groups[method]) for method in methods}
            rows.append({"question": fact.question, "answer": fact.answer, "type": fact.type, "replies": replies})
            named = {method: names_answer(reply, fact.answer) for method, reply in replies.items()}
            print(f"  {number + 1:>2}/{len(facts)} {fact.type:<11} {named}", flush=True)
    named = {m: sum(names_answer(row["replies"][m], row["answer"]) for row in rows) for m in methods}
    return {"questions": len(rows), "distractors": DISTRACTORS, "named": named, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("test", "tuning"), default="test")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="only the first N facts")
    parser.add_argument("--methods", default=",".join(METHODS), help="which of: " + ", ".join(METHODS))
    parser.add_argument("--config", default="", help="models.yaml overrides, e.g. memory.top_k=3 (a variant)")
    args = parser.parse_args()
    entry = load_settings().served
    facts, distractor_texts = question_set(args.set)
    facts = facts[: args.limit]
    methods = tuple(method for method in METHODS if method in args.methods.split(","))
    with tempfile.TemporaryDirectory() as folder:
        overrides = parse_overrides(args.config) if args.config else {}
        config = variant_config(entry, overrides, Path(folder)) if overrides else None
        with ready_server("ours", entry, Path(folder), Path(folder), config) as server:
            report = evaluate(server.base_url, entry.name, facts, distractor_texts, methods)
    report["config"] = args.config
    total = report["questions"]
    print(f"\nfact named in the chat answer ({entry.name}, {total} {args.set} facts, {DISTRACTORS} distractors):")
    for method, count in report["named"].items():
        print(f"  {method:<14} {count:>3}/{total}  {count / total:.0%}")
    out = args.out or ROOT / "bench-results" / f"eval-memory-chat-{args.set}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report | {"set": args.set}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
