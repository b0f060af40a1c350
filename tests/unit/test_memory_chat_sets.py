"""The chat-level memory eval (scripts/eval_memory_chat.py) counts an answer right when it contains the fact's
answer word: that only measures recall if the word is in the fact and in no distractor."""

from __future__ import annotations

import pytest

from tests import memory_corpus, memory_testset


@pytest.mark.parametrize(
    ("facts", "others"),
    [
        (memory_testset.test_facts, memory_testset.test_distractors),
        (memory_corpus.labelled_facts, memory_corpus.distractors),
    ],
    ids=["test", "tuning"],
)
def test_each_answer_word_is_in_its_fact_and_in_no_distractor(facts, others) -> None:
    facts = facts()
    noise = [text.lower() for text in others(2000)]
    assert facts and len(noise) == 2000
    for fact in facts:
        assert fact.answer.lower() in fact.fact.lower(), fact
        assert not any(fact.answer.lower() in text for text in noise), fact
