"""Knowledge updates at write time (ADD / UPDATE / DELETE / NOOP), as mem0 does, and attribution of
statements about the people the user names.

Each new fact is compared with the group's stored facts that are close to it (cosine) and about the
same person. Rules (the default, `memory.extraction: rules`, for the embedded model):
- NOOP: it says what a stored fact already says (cosine >= `duplicate_similarity`);
- DELETE: it withdraws a stored fact ("I don't have a car any more") -> the old one goes, the new is kept;
- UPDATE: it changes one ("I moved to Porto" after "I live in Lisbon"): a change word (moved, now,
  switched, new, quit, ...) and cosine >= `update_similarity`, or cosine >= `replace_similarity` with
  different names or numbers -> the old one is replaced;
- ADD otherwise.
With `memory.extraction: model` the served model judges (prompt below); an answer it cannot parse
falls back to the rules. Whatever is replaced or removed is kept in the audit log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from server.memory.recall import RELATIONS, third_party

Action = Literal["ADD", "UPDATE", "DELETE", "NOOP"]

_CHANGE = re.compile(
    r"\b(moved|move|moving|relocated|now|nowadays|these days|anymore|any more|no longer|switched|changed|"
    r"new|started|starting|quit|left|became|become|instead|actually|sold|bought|got a new|replaced|divorced|"
    r"married|retired|joined|since)\b",
    re.IGNORECASE,
)
_NEGATION = re.compile(
    r"\b(no longer|not any ?more|don't have|do not have|doesn't have|gave up|stopped)\b", re.IGNORECASE
)
_SALIENT = re.compile(r"\b(?:\d[\d.,:/-]*|[A-Z][a-z]+)\b")


@dataclass(frozen=True)
class Existing:
    id: int
    text: str
    similarity: float  # cosine to the new fact


@dataclass(frozen=True)
class Decision:
    action: Action
    target: int | None  # the stored memory replaced, removed or repeated
    reason: str


def _salient(text: str) -> set[str]:
    """Names and numbers, leaving out a sentence's first word (capitalised anyway)."""
    return {
        match.group(0)
        for match in _SALIENT.finditer(text)
        if match.start() > 0 and not re.search(r"[.!?]\s*$", text[: match.start()])
    } - {"I"}


def decide(
    new_text: str,
    existing: Sequence[Existing],
    *,
    duplicate_similarity: float,
    update_similarity: float,
    replace_similarity: float,
) -> Decision:
    """What to do with `new_text` given the stored facts closest to it (best first)."""
    about = third_party(new_text)
    same_person = [memory for memory in existing if third_party(memory.text) == about]
    for memory in same_person:
        if memory.similarity >= duplicate_similarity:
            return Decision("NOOP", memory.id, f"repeats memory {memory.id} (similarity {memory.similarity:.2f})")
    for memory in same_person:
        changed = _CHANGE.search(new_text) is not None
        if _NEGATION.search(new_text) and memory.similarity >= update_similarity:
            return Decision("DELETE", memory.id, f"withdrawn by a later statement ({memory.similarity:.2f})")
        if changed and memory.similarity >= update_similarity:
            return Decision("UPDATE", memory.id, f"superseded by a later statement ({memory.similarity:.2f})")
        if memory.similarity >= replace_similarity and _salient(new_text) != _salient(memory.text):
            return Decision("UPDATE", memory.id, f"same fact with new details ({memory.similarity:.2f})")
    return Decision("ADD", None, "new fact")


JUDGE_SYSTEM = (
    "You keep a list of facts about a user up to date. Given stored facts and one new fact, answer with "
    "exactly one line: ADD (a new fact), UPDATE <id> (the new fact replaces that stored fact), "
    "DELETE <id> (the new fact says that stored fact is no longer true), or NOOP (already known)."
)


def judge_prompt(new_text: str, existing: Sequence[Existing]) -> str:
    stored = "\n".join(f"[{memory.id}] {memory.text}" for memory in existing)
    return f"Stored facts:\n{stored}\nNew fact: {new_text}\nAnswer:"


_JUDGEMENT = re.compile(r"\b(ADD|UPDATE|DELETE|NOOP)\b(?:\s*\[?(\d+)\]?)?")


def parse_judgement(answer: str, existing: Sequence[Existing]) -> Decision | None:
    """The model's decision, or None when it named no action or a target it was not shown."""
    match = _JUDGEMENT.search(answer.upper())
    if match is None:
        return None
    action: Action = match.group(1)  # type: ignore[assignment]
    if action == "ADD":
        return Decision("ADD", None, "new fact (model)")
    ids = {memory.id for memory in existing}
    target = int(match.group(2)) if match.group(2) else None
    if action == "NOOP":
        return Decision("NOOP", target if target in ids else None, "already known (model)")
    if target not in ids:
        return None
    return Decision(action, target, f"{action.lower()} of memory {target} (model)")


_NAMED = re.compile(r"^([A-Z][a-z]+)(?:\s+and\s+[A-Z][a-z]+)?\s+(is|was|has|had|does|did|can|likes|loves|hates|"
                    r"works|lives|moved|got|started|can't|doesn't|isn't|won't|will|wants|needs|just|also|"
                    r"[a-z]+s)\b")  # fmt: skip
_RELATION_OF = r"\b(?:my|our)\s+(?:(?:old|best|new|little|big|older|younger)\s+)*({relations})\s+{name}\b"


def named_subject(sentence: str) -> str | None:
    """The person a statement is about when it starts with their name ("Ana is allergic to ..." -> "Ana")."""
    match = _NAMED.match(sentence.strip())
    return match.group(1) if match and match.group(1) not in {"I", "The", "This", "That", "It", "There"} else None


def relation_of(name: str, known: Sequence[str]) -> str | None:
    """How the user named `name` in stored memories ("my wife Ana ..." -> "wife"), the latest first."""
    pattern = re.compile(
        _RELATION_OF.format(relations="|".join(sorted(map(re.escape, RELATIONS), key=len, reverse=True)),
                            name=re.escape(name)),
        re.IGNORECASE,
    )  # fmt: skip
    for text in reversed(known):
        match = pattern.search(text)
        if match:
            return match.group(1).lower()
    return None


def attribute(sentence: str, name: str, relation: str) -> str:
    """ "Ana is allergic to shellfish too." -> "My wife Ana is allergic to shellfish too." (the user's voice)."""
    return f"My {relation} {sentence.strip()}"
