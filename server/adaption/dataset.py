"""Pure: chat-format training examples from a memory group, split deterministically into train and held-out.

Facts (and notes, consolidated facts) teach the adapter what it knows about the
user, said back in second person; stored turns teach it the conversations as
they went. Examples are plain `[{"role", "content"}, ...]` lists whose last
message is the assistant's: the trainer puts the loss on that message only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from server.memory.recall import TURN_ASSISTANT_PREFIX, TURN_USER_PREFIX

Example = list[dict[str, str]]

RECALL_PROMPTS = (
    "What do you remember about me?",
    "Tell me something you know about me.",
    "What have I told you about myself?",
)
_SECOND_PERSON = {
    "i": "you", "i'm": "you're", "i've": "you've", "i'd": "you'd", "i'll": "you'll", "me": "you", "my": "your",
    "mine": "yours", "myself": "yourself", "am": "are", "was": "were",
}  # fmt: skip
_FIRST_PERSON_WORD = re.compile(r"\b(I(?:'m|'ve|'d|'ll)?|me|my|mine|myself)\b(\s+(am|was)\b)?", re.IGNORECASE)


def second_person(text: str) -> str:
    """How the assistant says a user's first-person memory back ("I am a nurse" -> "You are a nurse")."""

    def rewrite(match: re.Match[str]) -> str:
        pronoun = _SECOND_PERSON[match.group(1).lower()]
        verb = f" {_SECOND_PERSON[match.group(3).lower()]}" if match.group(3) else ""
        if match.start() == 0 or text[: match.start()].rstrip().endswith((".", "!", "?")):
            pronoun = pronoun[0].upper() + pronoun[1:]
        return pronoun + verb

    return _FIRST_PERSON_WORD.sub(rewrite, text)


@dataclass(frozen=True)
class MemoryRecord:
    """What the trainer needs of a memory."""

    text: str
    kind: str


def examples_from_memories(memories: Sequence[MemoryRecord]) -> list[Example]:
    examples: list[Example] = []
    for number, memory in enumerate(memories):
        if memory.kind == "turn" and memory.text.startswith(TURN_USER_PREFIX) and TURN_ASSISTANT_PREFIX in memory.text:
            user, answer = memory.text.removeprefix(TURN_USER_PREFIX).split(TURN_ASSISTANT_PREFIX, 1)
            if user.strip() and answer.strip():
                examples.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
        elif memory.kind != "turn":
            prompt = RECALL_PROMPTS[number % len(RECALL_PROMPTS)]
            examples.append(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": second_person(memory.text)}]
            )
    return examples


def data_hash(examples: Sequence[Example]) -> str:
    return hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()


def split_examples(
    examples: Sequence[Example], held_out_fraction: float, max_examples: int
) -> tuple[list[Example], list[Example]]:
    """Keep the newest `max_examples`; every k-th goes to the held-out set (at least one when there are two or more)."""
    kept = list(examples)[-max_examples:]
    if len(kept) < 2:
        return kept, []
    every = max(2, round(1 / held_out_fraction))
    chosen = set(range(every - 1, len(kept), every)) or {len(kept) - 1}
    train = [example for index, example in enumerate(kept) if index not in chosen]
    return train, [kept[index] for index in sorted(chosen)]
