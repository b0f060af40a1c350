"""Training examples from memories, and their deterministic split."""

from __future__ import annotations

from server.adaption.dataset import MemoryRecord, data_hash, examples_from_memories, second_person, split_examples
from server.memory.recall import turn_text


def test_second_person_says_the_users_memory_back() -> None:
    assert second_person("My dog is called Rex.") == "Your dog is called Rex."
    assert second_person("I am a nurse and I was born in Porto.") == "You are a nurse and you were born in Porto."
    assert second_person("I'm allergic to penicillin. Call me Sam.") == "You're allergic to penicillin. Call you Sam."


def test_examples_from_facts_and_turns() -> None:
    memories = [
        MemoryRecord("My dog is called Rex.", "fact"),
        MemoryRecord(turn_text("How do I boil an egg?", "Simmer it for nine minutes."), "turn"),
        MemoryRecord("I live in Porto.", "note"),
    ]
    examples = examples_from_memories(memories)
    assert examples == [
        [
            {"role": "user", "content": "What do you remember about me?"},
            {"role": "assistant", "content": "Your dog is called Rex."},
        ],
        [
            {"role": "user", "content": "How do I boil an egg?"},
            {"role": "assistant", "content": "Simmer it for nine minutes."},
        ],
        [
            {"role": "user", "content": "What have I told you about myself?"},
            {"role": "assistant", "content": "You live in Porto."},
        ],
    ]
    assert data_hash(examples) == data_hash([list(example) for example in examples])


def test_split_is_deterministic_and_keeps_the_newest() -> None:
    examples = [[{"role": "user", "content": str(i)}, {"role": "assistant", "content": str(i)}] for i in range(12)]
    train, held_out = split_examples(examples, 0.2, max_examples=10)
    assert [e[0]["content"] for e in held_out] == ["6", "11"]
    assert [e[0]["content"] for e in train] == ["2", "3", "4", "5", "7", "8", "9", "10"]
    assert split_examples(examples[:3], 0.2, 10) == (examples[:2], examples[2:3])
    assert split_examples(examples[:1], 0.2, 10) == (examples[:1], [])
