"""Off-topic evidence under "only X" policies: the allowed topic read from the policy, the decision on
sentence embeddings (pure), and the judge on the real embedding model."""

from __future__ import annotations

import numpy as np
import pytest

from server.config import MemorySettings
from server.guardrails.topics import ANCHORS, TopicJudge, allowed_topic, checked_sentences, off_topic
from server.memory.embedder import Embedder


@pytest.mark.parametrize(
    ("policy", "topic"),
    [
        ("Only discuss cooking and recipes.", "cooking and recipes"),
        ("Keep every answer about travel in Japan.", "travel in Japan"),
        ("Stay on the topic of our accounting software; decline anything unrelated.", "our accounting software"),
        ("Respond only to questions about gardening.", "gardening"),
        ("Limit your answers to home insurance.", "home insurance"),
        ("Talk only about astronomy, and refuse everything else.", "astronomy"),
        ("Do not discuss anything other than our mobile app.", "our mobile app"),  # the negation confines
        ("Only help with questions related to billing.", "billing"),
        # not a confinement to a topic
        ("Never discuss religion.", None),
        ("Do not talk about politics or elections.", None),
        ("Answer only in French.", None),
        ("Do not use any language other than English.", None),
        ("Only give general legal information, never recommendations for a specific situation.", None),
    ],
)
def test_the_topic_a_policy_confines_replies_to(policy: str, topic: str | None) -> None:
    assert allowed_topic(policy) == topic


def test_short_sentences_and_fragments_are_not_judged() -> None:
    assert checked_sentences("Sure! Happy to help. Risotto needs warm stock added slowly.") == [
        "Risotto needs warm stock added slowly."
    ]


def unit(*values: float) -> np.ndarray:
    row = np.array(values, dtype=np.float32)
    return row / np.linalg.norm(row)


def test_off_topic_means_clearly_nearer_another_topic_than_the_allowed_one() -> None:
    topic = unit(1, 0, 0)
    anchors = np.stack([unit(0, 1, 0), unit(0.9, 0.1, 0)])  # the second is the allowed topic itself: ignored
    on = unit(1, 0.2, 0)
    away = unit(0.1, 1, 0)
    unrelated = unit(0, 0, 1)  # near no topic at all: nothing to say
    assert off_topic(np.stack([on, away]), topic, anchors)  # one stray sentence is enough
    assert not off_topic(np.stack([on]), topic, anchors)
    assert not off_topic(np.stack([unrelated]), topic, anchors)
    assert not off_topic(np.zeros((0, 3), dtype=np.float32), topic, anchors)
    assert not off_topic(np.stack([away]), topic, anchors[1:])  # no other topic left to compare with


async def test_the_judge_on_the_real_embedder() -> None:
    memory = MemorySettings()
    embedder = Embedder(memory.embedding_model, query_dtype=memory.query_embedding_dtype)  # as the server runs it
    try:
        judge = await TopicJudge.open(embedder.embed_short)
        assert judge.anchor_rows.shape[0] == len(ANCHORS)
        strays = await judge.off_topic("cooking and recipes", TEXTS)
        assert await judge.off_topic("cooking and recipes", []) == []
    finally:
        await embedder.close()
    assert strays == [False, False, True, True]


TEXTS = [
    "To keep risotto creamy, add the warm stock one ladle at a time and stir often.",
    "Bake the bread at 220 degrees for thirty minutes until golden.",
    "The striker scored twice and the team won the football match.",
    "Roast the peppers until blistered. By the way, that band's new album and the concert tour are great.",
]
