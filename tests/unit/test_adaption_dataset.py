"""What an adapter is taught from memories, and the held-out questions that probe it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.adaption.dataset import (
    MemoryRecord,
    contrast_example,
    curriculum,
    data_hash,
    first_person,
    frame,
    names_value,
    nearest_frames,
    second_person,
)
from server.adaption.runner import general_set, replay_set
from server.adaption.worker import complete_sentences
from server.memory.recall import turn_text

BENCH_FACTS = Path(__file__).resolve().parents[1] / "data" / "adaption_facts.jsonl"
DEV_FACTS = Path(__file__).resolve().parents[2] / "scripts" / "data" / "adaption_dev_facts.jsonl"


def test_second_person_says_the_users_memory_back() -> None:
    assert second_person("My dog is called Rex.") == "Your dog is called Rex."
    assert second_person("I am a nurse and I was born in Porto.") == "You are a nurse and you were born in Porto."


def test_facts_stored_in_third_person_are_read_as_the_user_said_them() -> None:
    assert first_person("The user's dog is called Rex.") == "My dog is called Rex."
    assert first_person("The user lives in Lima.") == "I live in Lima."
    assert first_person("The user watches birds.") == "I watch birds."
    assert first_person("The user is allergic to nuts.") == "I am allergic to nuts."
    assert first_person("I live in Porto.") == "I live in Porto."


@pytest.mark.parametrize(
    ("fact", "answer", "value", "a_question"),
    [
        ("My dog is called Rex.", "Your dog is called Rex.", "Rex", "What is my dog called?"),
        ("My favourite colour is teal.", "Your favourite colour is teal.", "teal", "What is my favourite colour?"),
        ("Quokkas are my favourite animals.", "Your favourite animals are Quokkas.", "Quokkas", None),
        ("I live in Porto.", "You live in Porto.", "Porto", "Where do I live?"),
        ("I work as a nurse.", "You work as a nurse.", "a nurse", "What do I work as?"),
        ("I was born in 1987.", "You were born in 1987.", "1987", "When was I born?"),
        ("I was born in Reykjavik.", "You were born in Reykjavik.", "Reykjavik", "Where was I born?"),
        ("I am allergic to peanuts.", "You are allergic to peanuts.", "peanuts", "What am I allergic to?"),
        ("I'm from Kenya.", "You are from Kenya.", "Kenya", "Where am I from?"),
        ("I grew up in Oslo.", "You grew up in Oslo.", "Oslo", "Where did I grow up?"),
        ("I play the cello.", "You play the cello.", "the cello", "What do I play?"),
        ("The user's cat is named Tom.", "Your cat is called Tom.", "Tom", "What is my cat's name?"),
    ],
)
def test_a_fact_becomes_questions_and_the_answer_that_names_its_value(
    fact: str, answer: str, value: str, a_question: str | None
) -> None:
    built = frame(fact)
    assert built is not None
    assert (built.answer, built.value) == (answer, value)
    assert len(built.train_questions) >= 4 and len(built.probe_questions) >= 2
    if a_question is not None:
        assert a_question in built.train_questions
    # Probes are worded apart from training: none is a training question.
    assert not {q.lower() for q in built.probe_questions} & {q.lower() for q in built.train_questions}
    assert all(names_value(built.answer, built.value) for _ in built.train_questions)
    assert not any(value.lower() in q.lower() for q in built.train_questions + built.probe_questions)


def test_statements_with_nothing_to_ask_are_not_facts() -> None:
    assert frame("Hi.") is None
    assert frame("") is None


def test_names_value_wants_every_content_word_of_the_value() -> None:
    assert names_value("Your car is a green Skoda!", "a green Skoda")
    assert names_value("you drive a SKODA that is green", "a green Skoda")
    assert not names_value("You drive a Skoda.", "a green Skoda")
    assert not names_value("Skodas are cars.", "Skoda")


def test_curriculum_teaches_each_fact_in_several_wordings_plus_the_real_exchanges() -> None:
    memories = [
        MemoryRecord("My dog is called Rex.", "fact"),
        MemoryRecord(turn_text("My dog is called Rex.", "What a lovely name!"), "turn"),
        MemoryRecord("I live in Porto.", "note"),
        MemoryRecord("I live in Porto.", "fact"),  # said twice: taught once
        MemoryRecord("Hello there.", "fact"),
    ]
    taught = curriculum(memories, questions_per_fact=4, probes_per_fact=2)
    assert (taught.facts, taught.turns) == (2, 1)
    rex = [example for example in taught.train if example[-1]["content"].startswith("Your dog is called Rex")]
    # four questions, the fact among what the model remembers about the user, and asked beside the other fact
    assert len(rex) == 4 + 1 + 1
    assert len({example[0]["content"] for example in rex}) == 6
    assert [
        {"role": "user", "content": "My dog is called Rex."},
        {"role": "assistant", "content": "What a lovely name!"},
    ] in taught.train
    assert all(example[-1]["role"] == "assistant" for example in taught.train)
    assert len(taught.probes) == 4 and {probe.value for probe in taught.probes} == {"Rex", "Porto"}
    trained_questions = {example[0]["content"].lower() for example in taught.train}
    assert not trained_questions & {probe.question.lower() for probe in taught.probes}
    # Deterministic: the same memories give the same data, byte for byte.
    again = curriculum(list(memories), questions_per_fact=4, probes_per_fact=2)
    assert data_hash(again.train) == data_hash(taught.train) and again.probes == taught.probes


def test_an_updated_fact_is_taught_with_its_new_value_only() -> None:
    before = curriculum([MemoryRecord("I live in Porto.", "fact")])
    after = curriculum([MemoryRecord("I live in Lisbon.", "fact")])
    assert all("Porto" not in example[-1]["content"] for example in after.train)
    assert {probe.value for probe in after.probes} == {"Lisbon"}
    assert data_hash(before.train) != data_hash(after.train)


@pytest.mark.parametrize("path", [BENCH_FACTS, DEV_FACTS], ids=["test set", "dev set"])
def test_the_bench_questions_are_written_apart_from_the_templates(path: Path) -> None:
    """The end-to-end figure (scripts/bench_adaption.py) asks hand-written questions no template produces."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 50
    for row in rows:
        built = frame(row["fact"])
        assert built is not None, row
        assert names_value(built.answer, row["value"]), row
        templated = {q.lower() for q in built.train_questions + built.probe_questions}
        assert not templated & {q.lower() for q in row["questions"]}, row


def test_replayed_answers_are_cut_to_their_last_complete_sentence() -> None:
    assert complete_sentences("Paris is the capital. It has many") == "Paris is the capital."
    assert complete_sentences("Hello! How are you? I am") == "Hello! How are you?"
    assert complete_sentences("no sentence end here") == ""


def test_the_replay_prompts_are_none_of_the_general_sets_questions() -> None:
    general = {item["question"].lower() for item in general_set()}
    replay = [item["question"].lower() for item in replay_set()]
    assert len(replay) >= 40 and not general & set(replay)


def test_the_dev_set_shares_no_fact_value_or_question_with_the_test_set() -> None:
    """Settings are tuned on the dev set (scripts/data), the reported figure is the test set's: kept apart."""
    test = [json.loads(line) for line in BENCH_FACTS.read_text().splitlines()]
    dev = [json.loads(line) for line in DEV_FACTS.read_text().splitlines()]
    for field in ("fact", "value"):
        assert not {row[field].lower() for row in test} & {row[field].lower() for row in dev}, field
    questions = [{q.lower() for row in rows for q in row["questions"]} for rows in (test, dev)]
    assert not questions[0] & questions[1]


def test_no_answer_is_taught_behind_a_fixed_prefix() -> None:
    """A taught prefix ("You told me: ...") made the model loop on it instead of naming the value."""
    taught = curriculum([MemoryRecord("My dog is called Rex.", "fact"), MemoryRecord("I live in Porto.", "fact")])
    answers = [example[-1]["content"] for example in taught.train]
    assert not any(answer.lower().startswith("you told me") for answer in answers)
    assert "Your dog is called Rex." in answers and "Your dog is called Rex, as you told me." in answers
    plain = sum(answer == "Your dog is called Rex." for answer in answers)
    assert plain > sum(answer == "Your dog is called Rex, as you told me." for answer in answers)


def test_alike_facts_are_asked_together_and_answered_each_with_its_own_value() -> None:
    facts = ["My dog is called Rex.", "I live in Porto.", "My cat is called Tom.", "I grew up in Oslo."]
    frames = [frame(fact) for fact in facts]
    assert all(built is not None for built in frames)
    # Two names pair with each other, two places with each other.
    assert nearest_frames(frames) == [2, 3, 0, 1]
    assert nearest_frames(frames[:1]) == [None]
    example = contrast_example(frames[0], frames[2])
    question, answer = example[0]["content"], example[1]["content"]
    assert answer == "Your dog is called Rex. Your cat is called Tom."
    assert question.count("?") + question.count(".") >= 2 and " And " in question
    assert not {"rex", "tom"} & set(question.lower().replace("?", " ").split())
    taught = curriculum([MemoryRecord(fact, "fact") for fact in facts])
    assert example in taught.train
    # The contrast questions are training wordings: still none of the held-out probes.
    trained = {example[0]["content"].lower() for example in taught.train}
    assert all(probe.question.lower() not in trained for probe in taught.probes)
    assert not any(probe.question.lower() in question.lower() for probe in taught.probes)
    # A fact alone has nothing to be told apart from.
    alone = curriculum([MemoryRecord(facts[0], "fact")])
    assert not any(" And " in example[0]["content"] for example in alone.train)
