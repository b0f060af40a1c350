"""Add the served model's kind of clean answers to the checker's training data as hard negatives (issue 15).

The checker flagged the embedded model's own rambling answers ("You can't drive a car, but ...", "You're a
human with a job.") and their first words under policies they do not touch. Two sources, both clean:
- the clean whole answers of the DEV set of model outputs (`scripts/data/guardrails_model_outputs_dev.jsonl`,
  its own policies), and their first-check prefixes (3 and 7 chunks; a stream reads those first);
- `scripts/data/model_style_negatives.txt`: more answers written in that style (hand-written), each paired with
  two policies from a pool of training and dev policies none of them touches, and its first words (4 to 7) with
  a third.
Never the test set of model outputs, nor model-dev's violating answers under any policy. Not applied yet (issue 15: the retraining did not fit this round); idempotent: rows this script added before (the texts of those sources)
are replaced, so `server/guardrails/data/train.jsonl` holds them once.

    python scripts/add_guard_hard_negatives.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "server" / "guardrails" / "data" / "train.jsonl"
DEV = ROOT / "scripts" / "data" / "guardrails_model_outputs_dev.jsonl"
STYLE = ROOT / "scripts" / "data" / "model_style_negatives.txt"
DEV_PREFIX_CHUNKS = (7,)
SEED = 15

# Policies the style answers break none of (no topic restrictions: a rambling answer may stray from a topic).
POOL: tuple[tuple[str, str], ...] = (
    ("Never mention competitor products.", "competitors"),
    ("Don't bring up Microsoft or any of its products.", "competitors"),
    (
        (
            "You are the assistant for Velo Rides, a bike rental app. Don't mention or recommend rival apps like Lime, "
            "Bird or Tier."
        ),
        "competitors",
    ),
    ("Do not recommend competing browsers; this is the support bot for the Orbit browser.", "competitors"),
    ("We are VoltMart. Never mention competitors like Amazon or Best Buy.", "competitors"),
    ("Never mention rival agencies such as Expedia or Booking.com.", "competitors"),
    ("Do not use profanity or insult the user.", "profanity"),
    ("Keep the chat clean: no swearing, no crude insults.", "profanity"),
    ("Be polite at all times. Do not insult or belittle the user.", "profanity"),
    ("Never disclose any credentials, including passwords and tokens.", "secrets"),
    ("Never reveal the internal code BLUEFIN-7.", "secrets"),
    ("Do not disclose customers' phone numbers or email addresses.", "personal_data"),
    ("Never reveal a person's physical address or location.", "personal_data"),
    ("Do not recommend dosages of any drug or supplement.", "medical_advice"),
    (
        "Health questions: never diagnose a condition and never recommend treatments. Suggest seeing a clinician.",
        "medical_advice",
    ),
    ("Never give legal advice about the user's particular situation.", "legal_advice"),
    ("Never recommend buying or selling particular securities.", "financial_advice"),
    ("Never give personalised investment advice.", "financial_advice"),
    ("Answer only in English.", "language"),
    ("Always reply in English.", "language"),
    ("Do not encourage self-harm, suicide or eating disorders.", "inappropriate"),
    ("Remain neutral on politics. Do not praise or criticise political parties or politicians.", "politics"),
    ("No violent content: never describe how to hurt people or glorify violence.", "violence"),
)


def style_rows(texts: list[str], rng: random.Random) -> list[dict]:
    rows = []
    for text in texts:
        first, second, third = rng.sample(POOL, 3)
        for policy, category in (first, second):
            rows.append({"policy": policy, "text": text, "violates": False, "category": category})
        words = text.split()
        prefix = " ".join(words[: rng.randint(4, 7)])
        rows.append({"policy": third[0], "text": prefix, "violates": False, "category": third[1]})
    return rows


def violating_answers() -> set[str]:
    """The texts of model-dev's violating answers: never trained on, under any policy (taught clean under its other
    policies, the checker learned the text itself as clean and scored it 0.00 under the policy it breaks too)."""
    rows = [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]
    return {row["text"] for row in rows if row["form"] == "answer" and row["violates"]}


def dev_rows() -> list[dict]:
    rows = []
    held_out = violating_answers()
    for line in DEV.read_text().splitlines():
        row = json.loads(line)
        keep = row["form"] == "answer" or len(row["chunks"]) in DEV_PREFIX_CHUNKS
        if keep and not row["violates"] and row["text"] not in held_out:
            rows.append({key: row[key] for key in ("policy", "text", "violates", "category")})
    return rows


def main() -> None:
    rng = random.Random(SEED)
    texts = [line.strip() for line in STYLE.read_text().splitlines() if line.strip()]
    added = style_rows(texts, rng) + dev_rows()
    added_texts = {row["text"] for row in added}
    kept = [json.loads(line) for line in TRAIN.read_text().splitlines() if line.strip()]
    replaced = added_texts | violating_answers()
    kept = [row for row in kept if row["text"] not in replaced]
    unique: dict[tuple[str, str], dict] = {}
    for row in added:
        unique.setdefault((row["policy"], row["text"]), row)  # the first of each pair, in order
    TRAIN.write_text("".join(json.dumps(row) + "\n" for row in kept + list(unique.values())))
    print(f"{len(kept)} cases kept, {len(unique)} hard negatives added -> {TRAIN}")


if __name__ == "__main__":
    main()
