"""Evidence for topic-restriction policies ("Only discuss cooking and recipes."): a sentence about another topic.

The cross-encoder reads "only X" policies poorly: it passed a plain physics answer under a cooking-only policy
and flagged on-topic answers about travel in Japan. A sentence embedding says more directly how far a
sentence is from the allowed topic: each sentence of the text is compared with the topic the policy allows
and with a fixed list of everyday topics (`ANCHORS`, less those near the allowed one). A sentence that is
clearly nearer another topic than the allowed one (by `margin`, and at least `floor` near it) is off topic,
and one such sentence violates the policy. It never speaks for compliance: the classifier decides the rest.

Sentence embeddings come from the memory's embedder (all-MiniLM-L6-v2, already loaded by the server); the
margins were chosen on the dev set (tests/data/guardrails_eval.jsonl). `allowed_topic` and `off_topic` are pure.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from server.guardrails.evidence import PROHIBITION

# "Only discuss X", "Only answer questions about X", "Stay on the topic of X", "Keep every answer about X",
# "Stick to X", "Talk only about X": X, up to the end of its clause.
VERB = r"(?:discuss|talk|chat|answer|respond|reply|help|assist|engage|converse)"
QUESTIONS = r"(?:(?:questions|requests|queries|topics|subjects|matters)\s+)?"
ABOUT = r"(?:about|on|with|to|regarding|concerning|related\s+to|relating\s+to)"
ALLOWED_TOPIC = re.compile(
    rf"(?:\bonly\s+{VERB}(?:\s+(?:to|with|on))?\s+{QUESTIONS}{ABOUT}|\bonly\s+(?:discuss|cover|answer)|"
    rf"\b{VERB}\s+only\s+(?:to\s+|with\s+)?{QUESTIONS}{ABOUT}?|"
    r"\bstay\s+(?:on|focused\s+on|within)\s+(?:the\s+)?(?:topic|subject)s?\s+of|\bstay\s+focused\s+on|"
    r"\bstick\s+to(?:\s+the\s+(?:topic|subject)s?\s+of)?|"
    r"\b(?:limit|restrict|confine)\s+(?:your\s+|all\s+|every\s+|the\s+)?(?:answers?|repl(?:y|ies)|responses?|"
    r"conversations?|discussions?|yourself|help|assistance|output)?\s*to(?:\s+questions\s+about|\s+the\s+topic\s+of)?|"
    r"\bkeep\s+(?:every|each|all|the|your)\s+(?:answers?|repl(?:y|ies)|responses?|conversations?|discussions?|"
    r"chats?)\s+(?:about|on|to|focused\s+on)|"
    r"\b(?:answers?|repl(?:y|ies)|responses?)\s+must\s+(?:be\s+|stay\s+|remain\s+)?(?:about|on|focused\s+on)|"
    r"\b(?:anything|topics?|subjects?|questions?)\s+(?:other\s+than|except|besides|apart\s+from|outside(?:\s+of)?|"
    r"unrelated\s+to|not\s+(?:related|relating)\s+to))\s+"
    r"(?P<topic>[^.;:!?\n]{3,120})",
    re.IGNORECASE,
)
ANCHORS = (
    "sports",
    "politics and elections",
    "movies and television",
    "music",
    "cooking and food",
    "computer programming",
    "travel and tourism",
    "money, banking and investing",
    "health and medicine",
    "science and physics",
    "religion",
    "shopping and products",
    "video games",
    "books and literature",
    "fitness and exercise",
    "cars",
    "weather",
    "relationships and dating",
    "pets and animals",
    "fashion",
    "law",
    "history",
    "mathematics",
    "education and school",
    "jobs and careers",
    "home and garden",
    "phones and mobile plans",
    "celebrities and gossip",
    "art",
    "gambling and betting",
    "software and apps",
    "business and finance",
    "technology",
    "news",
    "real estate",
)
EXCEPT = re.compile(r"\b(other\s+than|except|besides|apart\s+from|outside|unrelated|not\s+relat)", re.IGNORECASE)
RELATED = 0.5  # an anchor at least this near the allowed topic is part of it, not another topic
MARGIN = 0.12  # a sentence this much nearer another topic than the allowed one is off topic...
FLOOR = 0.15  # ...if it is at least this near that other topic
MIN_WORDS = 5  # shorter sentences (a greeting, a fragment) say too little
SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")
CACHED_TOPICS = 256

Embed = Callable[[Sequence[str]], Awaitable[np.ndarray]]  # unit-length rows, one per text (the memory's embedder)


def allowed_topic(policy: str) -> str | None:
    """The one topic a policy confines replies to, or None (a policy that forbids topics names no allowed one)."""
    match = ALLOWED_TOPIC.search(policy)
    if match is None:
        return None
    topic = re.split(r"\s*,?\s+\b(?:and\s+)?(?:decline|refuse|nothing\s+else|never|do\s+not|don'?t)\b", match["topic"])
    topic_text = topic[0].strip(" ,")
    clause = policy[max(0, policy.rfind(".", 0, match.start()) + 1) : match.start()]
    excepting = EXCEPT.search(match.group(0))  # "Do not discuss anything other than X": the negation confines
    if not topic_text or (PROHIBITION.search(clause) and not excepting):
        return None  # "Never only discuss ...": not a confinement
    return topic_text


def checked_sentences(text: str) -> list[str]:
    """The text's sentences long enough to tell their topic."""
    return [part.strip() for part in SENTENCE.split(text) if len(part.split()) >= MIN_WORDS]


def off_topic(
    sentence_rows: np.ndarray,
    topic_row: np.ndarray,
    anchor_rows: np.ndarray,
    margin: float = MARGIN,
    floor: float = FLOOR,
    related: float = RELATED,
) -> bool:
    """Whether any sentence (unit rows) is nearer another anchor topic than the allowed one by `margin`."""
    if len(sentence_rows) == 0:
        return False
    others = anchor_rows[anchor_rows @ topic_row < related]
    if len(others) == 0:
        return False
    to_topic = sentence_rows @ topic_row
    to_others = (sentence_rows @ others.T).max(axis=1)
    return bool(np.any((to_others >= floor) & (to_others - to_topic >= margin)))


class TopicJudge:
    """Off-topic sentences under "only X" policies, by sentence embeddings. `embed` is the memory embedder's
    `embed_short`: its own thread batches the checker's sentences with memory's queries (one tokenizer user),
    in bfloat16 where the CPU has it (the same decisions on the dev and test sets as float32, measured)."""

    def __init__(self, embed: Embed, anchor_rows: np.ndarray) -> None:
        self.embed = embed
        self.anchor_rows = anchor_rows
        self._topics: OrderedDict[str, np.ndarray] = OrderedDict()  # the latest topics' rows

    @classmethod
    async def open(cls, embed: Embed) -> TopicJudge:
        return cls(embed, await embed(list(ANCHORS)))

    async def topic_row(self, topic: str) -> np.ndarray:
        row = self._topics.pop(topic, None)
        if row is None:
            row = (await self.embed([topic]))[0]
        self._topics[topic] = row
        if len(self._topics) > CACHED_TOPICS:
            self._topics.popitem(last=False)
        return row

    async def off_topic(self, topic: str, texts: Sequence[str]) -> list[bool]:
        """For each text, whether a sentence of it is about another topic than `topic`."""
        topic_row = await self.topic_row(topic)
        pieces = [checked_sentences(text) for text in texts]
        flat = [sentence for sentences in pieces for sentence in sentences]
        rows = await self.embed(flat) if flat else np.zeros((0, len(topic_row)), dtype=np.float32)
        verdicts, offset = [], 0
        for sentences in pieces:
            verdicts.append(off_topic(rows[offset : offset + len(sentences)], topic_row, self.anchor_rows))
            offset += len(sentences)
        return verdicts
