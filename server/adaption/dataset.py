"""Pure: what an adapter is taught from a memory group, and how its learning is probed.

Each fact (kinds `fact`, `note`, `consolidated`: what the user said about
themselves) is read into a frame: the topic a question asks about and the value
the answer must name ("My dog is called Rex." -> the name of "my dog", "Rex").
From a frame come

- training examples: several questions in varied wordings, each answered with
  the fact said back in second person ("Your dog is called Rex."), in the chat
  format the model is served with (plain message lists; the worker renders
  them with the model's chat template);
- probes: questions in *other* wordings, never trained on, and the value the
  answer must name. The promotion test asks them of the base model, the served
  version and the new one.

The group's real exchanges (`turn` memories) are taught as they went. Everything
here is a pure function of the memories, so a group revision always gives the
same data.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from server.memory.recall import TURN_ASSISTANT_PREFIX, TURN_USER_PREFIX

Example = list[dict[str, str]]

FACT_KINDS = frozenset({"fact", "note", "consolidated"})
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


_THIRD_PERSON_BE = re.compile(r"^the user (is|was|has)\b", re.IGNORECASE)
_THIRD_PERSON_VERB = re.compile(r"^the user (\w+)\b", re.IGNORECASE)


def first_person(text: str) -> str:
    """A fact stored about the user in third person, as the user said it ("The user's dog is Rex." -> "My dog is
    Rex.", "The user lives in Lima." -> "I live in Lima."); first-person text is returned unchanged."""
    if text.lower().startswith("the user's "):
        return "My " + text[len("the user's ") :]
    if match := _THIRD_PERSON_BE.match(text):
        verb = {"is": "am", "was": "was", "has": "have"}[match.group(1).lower()]
        return f"I {verb}{text[match.end() :]}"
    if match := _THIRD_PERSON_VERB.match(text):
        verb = match.group(1)
        if verb.endswith("ies"):
            base = verb[:-3] + "y"
        elif verb.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
            base = verb[:-2]
        else:
            base = verb.removesuffix("s")
        return f"I {base}{text[match.end() :]}"
    return text


@dataclass(frozen=True)
class MemoryRecord:
    """What the trainer needs of a memory."""

    text: str
    kind: str


@dataclass(frozen=True)
class Frame:
    """One fact as question material: questions asked of it and the answer that names `value`."""

    fact: str  # the fact as the user said it (first person)
    answer: str  # the fact said back ("Your dog is called Rex.")
    value: str  # what an answer must name ("Rex")
    train_questions: tuple[str, ...]
    probe_questions: tuple[str, ...]


@dataclass(frozen=True)
class Probe:
    """A held-out question about a trained fact, and the value its answer must name."""

    question: str
    value: str
    fact: str


_ARTICLE = re.compile(r"^(?:a|an|the|some)\s+", re.IGNORECASE)
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "my",
        "your",
        "our",
        "their",
        "his",
        "her",
        "its",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "i",
        "you",
        "me",
        "some",
        "very",
        "really",
        "quite",
        "that",
        "this",
        "these",
        "those",
        "it",
    ]
)
_TIME_VALUE = re.compile(
    r"^(?:\d{3,4}s?|(?:in\s+)?(?:january|february|march|april|may|june|july|august|september|october|november|"
    r"december|spring|summer|autumn|fall|winter|mondays?|tuesdays?|wednesdays?|thursdays?|fridays?|saturdays?|"
    r"sundays?|weekends?)\b.*)$",
    re.IGNORECASE,
)
_IRREGULAR_PAST = {
    "grew": "grow", "went": "go", "met": "meet", "bought": "buy", "made": "make", "had": "have", "got": "get",
    "took": "take", "wrote": "write", "drove": "drive", "flew": "fly", "built": "build", "left": "leave",
    "spent": "spend", "studied": "study", "taught": "teach", "ran": "run", "swam": "swim", "won": "win",
    "came": "come", "found": "find", "lost": "lose", "sold": "sell", "moved": "move", "lived": "live",
    "worked": "work", "started": "start", "used": "use", "named": "name", "loved": "love", "liked": "like",
}  # fmt: skip
_PREP_WH = {
    "in": "where", "at": "where", "near": "where", "from": "where", "to": "where", "into": "where",
    "as": "what", "for": "who", "with": "who", "on": "what", "about": "what", "by": "who",
}  # fmt: skip


def content_words(text: str) -> list[str]:
    return [word for word in re.findall(r"[\w'-]+", text.lower()) if word not in _STOPWORDS]


def names_value(answer: str, value: str) -> bool:
    """Whether `answer` names `value`: every content word of the value appears in it (case and order ignored)."""
    wanted = content_words(value) or [value.lower().strip()]
    said = set(re.findall(r"[\w'-]+", answer.lower()))
    return all(word in said for word in wanted)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _clean(text: str) -> str:
    return " ".join(text.split()).strip().rstrip(".!").strip()


def _possessive_frame(fact: str, noun: str, verb: str, value: str) -> Frame:
    """ "My <noun> <is|are> [called] <value>"."""
    plural = verb in ("are", "were")
    be = "are" if plural else "is"
    named = re.match(r"^(?:called|named)\s+(.+)$", value, re.IGNORECASE)
    if named:
        value = named.group(1)
        answer = f"Your {noun} {be} called {value}."
        pronoun = "they" if plural else "it"
        train = (
            f"What is my {noun} called?",
            f"What's the name of my {noun}?",
            f"What is my {noun}'s name?",
            f"Do you know what my {noun} {be} called?",
            f"Tell me the name of my {noun}.",
            f"What did I say my {noun} {be} called?",
            f"What name does my {noun} have?",
        )
        probes = (
            f"Remind me, what did I name my {noun}?",
            f"Could you tell me my {noun}'s name, please?",
            f"My {noun}, what's {pronoun} called again?",
        )
        return Frame(fact, answer, value, train, probes)
    answer = f"Your {noun} {be} {value}."
    train = (
        f"What {be} my {noun}?",
        f"What's my {noun}?" if not plural else f"What are my {noun} again?",
        f"Do you remember my {noun}?",
        f"Tell me my {noun}.",
        f"Do you know what my {noun} {be}?",
        f"What did I tell you my {noun} {be}?",
        f"Which {noun} do I have?" if not plural else f"Which are my {noun}?",
    )
    probes = (
        f"Can you remind me what my {noun} {be}?",
        f"Quick question: my {noun}, what {be} {'they' if plural else 'it'}?",
        f"Say, what was my {noun} again?" if not plural else f"Say, what were my {noun} again?",
    )
    return Frame(fact, answer, value, train, probes)


def _verb_frame(fact: str, verb: str, prep: str | None, value: str) -> Frame:
    """ "I <verb> [<prep>] <value>": direct questions where the verb's base form is known, else embedded ones."""
    words = verb.split()
    head, rest = words[0].lower(), " ".join(words[1:])
    past = head in _IRREGULAR_PAST or head.endswith("ed")
    lemma = _IRREGULAR_PAST.get(head, head)
    base = f"{lemma} {rest}".strip()
    aux = "did" if past else "do"
    if head.endswith("ed") and head not in _IRREGULAR_PAST:
        direct = None  # no reliable base form: ask only embedded questions ("where I worked")
    else:
        direct = base
    wh = "what" if prep is None else _PREP_WH.get(prep.lower(), "what")
    if prep is not None and wh == "where" and _TIME_VALUE.match(value):
        wh = "when"
    tail = "" if prep is None or wh in ("where", "when") else f" {prep}"
    clause = f"{wh} I {verb}{tail}"  # embedded: "where I live", "what I work as"
    answer = f"You {verb} {prep + ' ' if prep else ''}{value}."
    train = [
        f"Do you know {clause}?",
        f"Tell me {clause}.",
        f"Do you remember {clause}?",
        f"What did I tell you about {clause}?",
    ]
    if direct is not None:
        train += [f"{_capital(wh)} {aux} I {direct}{tail}?", f"So, {wh} {aux} I {direct}{tail}?"]
    probes = (
        f"Remind me {clause}, would you?",
        f"I forgot: {clause}. Can you tell me?",
        f"Any idea {clause}?",
    )
    return Frame(fact, answer, value, tuple(train), probes)


def _be_frame(fact: str, verb: str, rest: str) -> Frame | None:
    """ "I am <...>" / "I was <...>"."""
    be = "are" if verb.lower() in ("am", "'m") else "were"
    past = be == "were"
    born = re.match(r"^born\s+(in|on|at)\s+(.+)$", rest, re.IGNORECASE)
    if born:
        wh = "when" if _TIME_VALUE.match(born.group(2)) or born.group(1).lower() == "on" else "where"
        value = born.group(2)
        answer = f"You were born {born.group(1)} {value}."
        train = (
            f"{_capital(wh)} was I born?",
            f"Do you know {wh} I was born?",
            f"Tell me {wh} I was born.",
            f"Do you remember {wh} I was born?",
            f"{_capital(wh)} is my birth{'day' if wh == 'when' else 'place'}?",
        )
        probes = (f"Remind me {wh} I was born, would you?", f"Any idea {wh} I was born?", f"I forgot {wh} I was born.")
        return Frame(fact, answer, value, train, probes)
    relation = re.match(r"^(\w+)\s+(to|of|in|about|from|with|at|for)\s+(.+)$", rest, re.IGNORECASE)
    if relation and not _ARTICLE.match(rest):
        adjective, prep, value = relation.groups()
        clause = f"what I am {adjective} {prep}" if not past else f"what I was {adjective} {prep}"
        answer = f"You {be} {adjective} {prep} {value}."
        train = (
            f"What {'am' if not past else 'was'} I {adjective} {prep}?",
            f"Do you know {clause}?",
            f"Tell me {clause}.",
            f"Do you remember {clause}?",
            f"What did I tell you about {clause}?",
        )
        probes = (f"Remind me {clause}, would you?", f"Any idea {clause}?", f"I forgot {clause}. Can you tell me?")
        return Frame(fact, answer, value, train, probes)
    origin = re.match(r"^from\s+(.+)$", rest, re.IGNORECASE)
    if origin:
        value = origin.group(1)
        answer = f"You {be} from {value}."
        train = (
            f"Where {'am' if not past else 'was'} I from?",
            "Do you know where I come from?",
            "Tell me where I am from.",
            "Do you remember where I'm from?",
            "What is my home country?",
        )
        probes = ("Remind me where I'm from, would you?", "Any idea where I come from?", "I forgot where I'm from.")
        return Frame(fact, answer, value, train, probes)
    if _ARTICLE.match(rest):
        value = rest
        answer = f"You {be} {value}."
        train = (
            f"What {'am' if not past else 'was'} I?",
            f"Do you know what I {'am' if not past else 'was'}?",
            "What do I do?",
            "Tell me what I do.",
            "What is my job?" if not past else "What was my job?",
            "Do you remember what I do for a living?",
        )
        probes = (
            "Remind me what I do, would you?",
            "Any idea what my occupation is?",
            f"I forgot: what {'am' if not past else 'was'} I again?",
        )
        return Frame(fact, answer, value, train, probes)
    return None


def _fallback_frame(fact: str) -> Frame | None:
    """Any other statement: asked about by its first content words, answered with the whole fact."""
    words = content_words(fact)
    if len(words) < 2 or not _FIRST_PERSON_WORD.search(fact):
        return None  # not about the user
    topic, value = " ".join(words[: min(2, len(words) - 1)]), words[-1]
    answer = second_person(fact if fact[-1] in ".!" else fact + ".")
    train = (
        f"What did I tell you about {topic}?",
        f"What do you know about my {topic}?",
        f"Do you remember what I said about {topic}?",
        f"Tell me what I said about {topic}.",
    )
    probes = (f"Remind me what I mentioned about {topic}.", f"Anything you recall about {topic}?")
    return Frame(fact, answer, value, train, probes)


_IS_MY = re.compile(r"^(?P<value>[\w' -]+?)\s+(?P<verb>is|are|was|were)\s+my\s+(?P<noun>[\w' -]+)$", re.IGNORECASE)
_MY = re.compile(r"^my\s+(?P<noun>[\w' -]+?)\s+(?P<verb>is|are|was|were|'s)\s+(?P<value>.+)$", re.IGNORECASE)
_I_BE = re.compile(r"^(?:i\s+(?P<verb>am|was)|i(?P<short>'m))\s+(?P<rest>.+)$", re.IGNORECASE)
_I_VERB_PREP = re.compile(
    r"^i\s+(?P<verb>\w+(?:\s+up|\s+out)?)\s+(?P<prep>in|at|near|from|to|into|as|for|with|on|about|by)\s+(?P<value>.+)$",
    re.IGNORECASE,
)
_I_VERB = re.compile(r"^i\s+(?P<verb>\w+)\s+(?P<value>.+)$", re.IGNORECASE)
_NOT_VERBS = frozenset({"think", "guess", "believe", "feel", "want", "need", "would", "will", "can", "could", "should"})


def frame(text: str) -> Frame | None:
    """The question material of a fact, or None for text that states nothing to ask about."""
    fact = first_person(_clean(text))
    if not fact or len(fact.split()) < 2:
        return None
    sentence = fact + "."
    if match := _MY.match(fact):
        verb = "is" if match["verb"] == "'s" else match["verb"].lower()
        return _possessive_frame(sentence, match["noun"].lower(), verb, match["value"])
    if (match := _IS_MY.match(fact)) and not match["value"].lower().startswith(("i ", "it ", "this ", "that ")):
        return _possessive_frame(sentence, match["noun"].lower(), match["verb"].lower(), match["value"])
    if match := _I_BE.match(fact):
        built = _be_frame(sentence, match["verb"] or "am", match["rest"])
        if built is not None:
            return built
    if (match := _I_VERB_PREP.match(fact)) and match["verb"].lower() not in _NOT_VERBS:
        return _verb_frame(sentence, match["verb"].lower(), match["prep"].lower(), match["value"])
    if (match := _I_VERB.match(fact)) and match["verb"].lower() not in _NOT_VERBS | {"am", "was"}:
        return _verb_frame(sentence, match["verb"].lower(), None, match["value"])
    return _fallback_frame(fact)


def _pick(key: str, items: Sequence[str], count: int) -> list[str]:
    """`count` of `items`, rotated by a hash of `key`: deterministic, and different facts start elsewhere."""
    start = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(items)
    return [items[(start + offset) % len(items)] for offset in range(min(count, len(items)))]


def answer_variants(frame_: Frame) -> tuple[str, ...]:
    """The answer said plainly, and once with a natural tail. No form that starts with a fixed prefix: the model
    learned to loop on one ("You told me: You told me: ...") instead of naming the value."""
    return (frame_.answer, f"{frame_.answer.rstrip('.')}, as you told me.")


def _question_words(frame_: Frame) -> frozenset[str]:
    return frozenset(word for question in frame_.train_questions for word in content_words(question))


def nearest_frames(frames: Sequence[Frame]) -> list[int | None]:
    """For each frame, the index of the other frame asked about most alike (Jaccard of the content words of their
    training questions: two names, two places), the first on ties; None where there is no other frame."""
    words = [_question_words(built) for built in frames]
    nearest: list[int | None] = []
    for index, mine in enumerate(words):
        best, best_score = None, -1.0
        for other, theirs in enumerate(words):
            if other == index:
                continue
            union = len(mine | theirs)
            score = len(mine & theirs) / union if union else 0.0
            if score > best_score:
                best, best_score = other, score
        nearest.append(best)
    return nearest


def contrast_example(mine: Frame, other: Frame) -> Example:
    """Two alike facts asked about together and answered each with its own value, so that their values are told
    apart (`mine`'s question first; the questions are training wordings, never probes)."""
    first = _pick(mine.fact + "/contrast", mine.train_questions, 1)[0]
    second = _pick(other.fact + "/contrast-with", other.train_questions, 1)[0]
    question = f"{first} And {second[:1].lower()}{second[1:]}"
    return [{"role": "user", "content": question}, {"role": "assistant", "content": f"{mine.answer} {other.answer}"}]


@dataclass(frozen=True)
class Curriculum:
    """A memory group's training data and its held-out probes."""

    train: list[Example]
    probes: list[Probe]
    facts: int  # facts read into frames
    turns: int  # real exchanges taught


def curriculum(memories: Sequence[MemoryRecord], questions_per_fact: int = 6, probes_per_fact: int = 2) -> Curriculum:
    """Training examples (questions per fact in varied wordings, plus the real exchanges) and probes in other wordings.

    Each fact is also asked about once together with the fact most alike it (`contrast_example`), so that similar
    facts (two names, two places) keep their own values. A fact stated more than once (or updated: the memory holds
    the new value) is taught once.
    """
    items: list[Frame | Example] = []  # in memory order: a fact's frame, or a real exchange
    seen: set[str] = set()
    turns = 0
    for memory in memories:
        if memory.kind == "turn":
            if memory.text.startswith(TURN_USER_PREFIX) and TURN_ASSISTANT_PREFIX in memory.text:
                user, answer = memory.text.removeprefix(TURN_USER_PREFIX).split(TURN_ASSISTANT_PREFIX, 1)
                if user.strip() and answer.strip():
                    items.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
                    turns += 1
            continue
        if memory.kind not in FACT_KINDS:
            continue
        built = frame(memory.text)
        if built is None or built.fact.lower() in seen:
            continue
        seen.add(built.fact.lower())
        items.append(built)
    frames = [item for item in items if isinstance(item, Frame)]
    nearest = nearest_frames(frames)
    train: list[Example] = []
    probes: list[Probe] = []
    facts = 0
    for item in items:
        if not isinstance(item, Frame):
            train.append(item)
            continue
        built = item
        facts += 1
        answers = answer_variants(built)
        for number, question in enumerate(_pick(built.fact, built.train_questions, questions_per_fact)):
            answer = answers[1] if number % 3 == 1 else answers[0]
            train.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
        train.append(
            [
                {"role": "user", "content": RECALL_PROMPTS[facts % len(RECALL_PROMPTS)]},
                {"role": "assistant", "content": built.answer},
            ]
        )
        if (other := nearest[facts - 1]) is not None:
            train.append(contrast_example(built, frames[other]))
        trained = {example[0]["content"].lower() for example in train}
        for question in _pick(built.fact + "/probe", built.probe_questions, probes_per_fact):
            if question.lower() not in trained:
                probes.append(Probe(question, built.value, built.fact))
    return Curriculum(train, probes, facts, turns)


def data_hash(examples: Sequence[Example]) -> str:
    return hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()
