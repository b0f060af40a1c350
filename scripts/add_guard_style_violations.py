"""Add violations written in the served model's voice to the checker's training data, beside the hard negatives (issue 15).

`add_guard_hard_negatives.py` taught the checker that the model's rambling, listy, friendly answers are clean; retrained
on it alone, it passed the real violations too (violating model-test streams cut 2 of 5). So the same voice must also
carry violations: `scripts/data/model_style_violations.py` holds answers in that voice, of every kind of policy, with
the violation (marked `[[...]]`) in the middle or near the end. From each answer (deterministic, seed below):
- the whole answer under two wordings of its kind's policies: violating;
- two stream-window pieces of it (the violation with some words either side, starting and ending mid-sentence, as a
  stream guard's window reads it), each under a wording of its kind: violating;
- the same answer with the violation left out, and its words before the violation (at least 8 words): clean, under
  one of its policies (a contrast: the voice is not what decides).
A violating piece keeps its violation whole in every fragment `training.training_pairs` may cut from it (a fragment
keeps at least `VIOLATING_FRAGMENT_SHARE` of the words, from one end): a window that would lose it is widened, a whole
answer that would lose it keeps only its windows. They go to `server/guardrails/data/train.jsonl` only, never to an
evaluation set. Measured and not applied yet (README, guardrails: the retrained checker's dev F1 fell). Idempotent: rows this script added before (an answer or a piece of one) are replaced.

    python scripts/add_guard_style_violations.py
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "server" / "guardrails" / "data" / "train.jsonl"
SOURCE = ROOT / "scripts" / "data" / "model_style_violations.py"
SEED = 21
WINDOWS_PER_TEXT = 2
MIN_CLEAN_WORDS = 8
FRAGMENT_SHARE = 0.75  # training.VIOLATING_FRAGMENT_SHARE (not imported: that pulls in the model stack)
KEPT_SHARE = 2 / 3
MIN_PIECE_CHARS = 40  # a shorter text found inside an answer may be another source's
MARKED = re.compile(r"\[\[(.+?)\]\]", re.DOTALL)


def load_kinds() -> dict[str, dict]:
    spec = importlib.util.spec_from_file_location("model_style_violations", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.KINDS


def split_marked(marked: str) -> tuple[str, str, str]:
    """(before, violation, after) of a text with one `[[violation]]`."""
    found = MARKED.search(marked)
    if found is None or MARKED.search(marked, found.end()) is not None:
        raise ValueError(f"a text needs exactly one [[violation]]: {marked[:60]!r}")
    return marked[: found.start()], found.group(1), marked[found.end() :]


def joined(*parts: str) -> str:
    """Parts joined with the whitespace between them kept, and no doubled blank at a removed part."""
    text = "".join(parts)
    text = re.sub(r"[ \t]+\n", "\n", re.sub(r" {2,}", " ", text))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def keeps_violation(before: int, violation: int, after: int) -> bool:
    """Whether every fragment training may cut (at least FRAGMENT_SHARE of the words, from either end) keeps at
    least KEPT_SHARE of the violation's words (a violating sentence cut short still violates). Pure."""
    total = before + violation + after
    shortest = math.ceil(FRAGMENT_SHARE * total)
    from_start = min(violation, shortest - before)
    from_end = min(violation, before + violation - (total - shortest))
    return min(from_start, from_end) >= KEPT_SHARE * violation


def window(before: list[str], violation: list[str], after: list[str], rng: random.Random) -> str | None:
    """A stream-window piece: the violation with some words either side (widened until every training fragment of
    it keeps the violation), or None where the answer has too few words around it (or none on one side)."""
    if not before or not after:
        return None
    side = max(4, math.ceil(len(violation) / 2) + 1)
    left = min(len(before), rng.randint(side, side + 14))
    right = min(len(after), rng.randint(side, side + 10))
    while not keeps_violation(left, len(violation), right):
        if left < len(before) and left <= right:
            left += 1
        elif right < len(after):
            right += 1
        elif left < len(before):
            left += 1
        else:
            return None
    return " ".join(before[len(before) - left :] + violation + after[:right])


def rows_for(kind: str, policies: tuple[str, ...], marked: str, rng: random.Random) -> list[dict]:
    before, violation, after = split_marked(marked)
    whole = joined(before, violation, after)
    words_before, words_violation, words_after = before.split(), violation.split(), after.split()
    chosen = list(policies) if len(policies) <= 2 else rng.sample(policies, 2)
    rows = []
    if keeps_violation(len(words_before), len(words_violation), len(words_after)):
        rows += [{"policy": policy, "text": whole, "violates": True, "category": kind} for policy in chosen]
    for _ in range(WINDOWS_PER_TEXT):
        piece = window(words_before, words_violation, words_after, rng)
        if piece is not None:
            rows.append({"policy": rng.choice(policies), "text": piece, "violates": True, "category": kind})
    clean = [joined(before, after)]
    if len(words_before) >= MIN_CLEAN_WORDS:
        clean.append(" ".join(words_before))
    rows += [{"policy": chosen[0], "text": text, "violates": False, "category": kind} for text in clean]
    return rows


def style_violation_rows(kinds: dict[str, dict], seed: int = SEED) -> list[dict]:
    """Every row the answers give, deterministic for `seed`, each (policy, text) once."""
    rng = random.Random(seed)
    rows = []
    for kind, spec in kinds.items():
        for entry in spec["texts"]:
            policies = tuple(entry.get("policies") or spec["policies"])
            rows += rows_for(spec.get("category", kind), policies, entry["text"], rng)
    unique: dict[tuple[str, str], dict] = {}
    for row in rows:
        unique.setdefault((row["policy"], row["text"]), row)  # the first of each pair, in order
    return list(unique.values())


def from_these_answers(text: str, answers: list[str]) -> bool:
    """Whether `text` is one of the answers or a piece of one (whitespace aside): what this script wrote before,
    whatever the seed drew then. Pure."""
    flat = " ".join(text.split())
    return len(flat) >= MIN_PIECE_CHARS and any(flat in answer for answer in answers)


def answers_flat(kinds: dict[str, dict]) -> list[str]:
    """Each answer with its violation and without it, whitespace collapsed."""
    out = []
    for spec in kinds.values():
        for entry in spec["texts"]:
            before, violation, after = split_marked(entry["text"])
            out += [" ".join(joined(before, violation, after).split()), " ".join(joined(before, after).split())]
    return out


def main() -> None:
    kinds = load_kinds()
    added = style_violation_rows(kinds)
    added_texts = {row["text"] for row in added}
    answers = answers_flat(kinds)
    kept = [json.loads(line) for line in TRAIN.read_text().splitlines() if line.strip()]
    kept = [row for row in kept if row["text"] not in added_texts and not from_these_answers(row["text"], answers)]
    TRAIN.write_text("".join(json.dumps(row) + "\n" for row in kept + added))
    violating = sum(row["violates"] for row in added)
    print(
        f"{len(kept)} cases kept, {len(added)} added ({violating} violating, {len(added) - violating} clean) -> {TRAIN}"
    )


if __name__ == "__main__":
    main()
