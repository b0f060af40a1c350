"""The memory TEST sets: frozen, written apart from the tuning set (tests/memory_corpus.py), never tuned on.

Another voice than the tuning set: casual, American, lower-case chat rather than
tidy British sentences. Two sets:
- `test_facts()`: single facts, each with a question that needs paraphrase, a broader word
  (pet for a named cat, boss for manager, computer for a laptop model) or one step of
  inference (an allergy -> a dish), hidden among `test_distractors(2000)`;
- `test_sessions()`: two users' multi-session conversations, every user turn stored with its
  session's date; questions about time, knowledge updates (the newer turn is the evidence),
  inference and paraphrase. Distractors there are dated turns about the same people and topics.

Distractors talk about the same kinds of things (other people's pets, jobs, laptops, food,
health) and the same people, but never answer a question: any containing an answer is dropped.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class TestFact:
    fact: str
    question: str
    answer: str
    type: str


@dataclass(frozen=True)
class Turn:
    id: str
    text: str
    date: str  # ISO date of the session


@dataclass(frozen=True)
class SessionQuestion:
    question: str
    date: str
    evidence: tuple[str, ...]
    answer: str
    type: str


@dataclass(frozen=True)
class Conversation:
    group: str
    turns: tuple[Turn, ...]
    questions: tuple[SessionQuestion, ...]


def test_facts() -> list[TestFact]:
    with (DATA / "memory_test_facts.jsonl").open(encoding="utf-8") as fh:
        return [TestFact(**json.loads(line)) for line in fh if line.strip()]


def test_sessions() -> list[Conversation]:
    data = json.loads((DATA / "memory_test_sessions.json").read_text(encoding="utf-8"))
    conversations = []
    for conversation in data["conversations"]:
        turns = tuple(
            Turn(turn["id"], turn["text"], session["date"])
            for session in conversation["sessions"]
            for turn in session["turns"]
        )
        questions = tuple(
            SessionQuestion(q["question"], q["date"], tuple(q["evidence"]), q["answer"], q["type"])
            for q in conversation["questions"]
        )
        conversations.append(Conversation(conversation["group"], turns, questions))
    return conversations


def _v(text: str) -> list[str]:
    return text.split("|")


_SLOTS = {
    "name": _v(
        "Jen|Marcus|Tiff|Dre|Kayla|Brandon|Luz|Trevor|Aisha|Cody|Bri|Hector|Shay|Nate|Gabby|Devin|Rosa|Kyle|"
        "Jasmine|Tyler|Mo|Becca|Omar|Lexi|Chase|Yolanda|Rico|Destiny|Garrett|Nia|Jorge|Hailey|Darnell|Megan"
    ),
    "rel": _v("coworker|neighbor|buddy|roommate from college|cousin|friend from the gym|landlord|old teammate"),
    "family": _v("Priya|Marisol|Tomasz|Sam|Walt|Renee|Eli|Ines"),
    "pet": _v("dog|cat|parrot|rabbit|hamster|gecko|corgi|husky|tortoise|goldfish|ferret|pug"),
    "petname": _v(
        "Biscuit|Noodle|Waffles|Pretzel|Bean|Mochi|Ziggy|Peanut Butter|Rocket|Bandit|Clementine|Gizmo|Tater|Juno"
    ),
    "job": _v(
        "nurse|paralegal|HVAC tech|barista|data analyst|middle school teacher|realtor|line cook|pharmacy tech|"
        "mail carrier|dental hygienist|electrician|project manager|sales rep|lab tech|firefighter"
    ),
    "gadget": _v(
        "Dell XPS|Chromebook|gaming PC|iPad Air|Surface Pro|Galaxy S23|old iMac|Lenovo Yoga|Steam Deck|Kindle"
    ),
    "food": _v("shellfish|strawberries|eggs|soy|sesame|gluten|mushrooms|cilantro|spicy food|red meat|onions|garlic"),
    "dish": _v(
        "chili|lasagna|tacos|banana bread|mac and cheese|ramen|fried rice|gumbo|meatloaf|enchiladas|pho|pot roast"
    ),
    "show": _v(
        "Severance|The Bear|Succession|Ted Lasso|Only Murders|Abbott Elementary|Shogun|Slow Horses|Yellowjackets"
    ),
    "place": _v(
        "Costco|Target|the DMV|the post office|Home Depot|the vet|urgent care|the car wash|Trader Joe's|the bank"
    ),
    "city": _v(
        "Austin|Boise|Columbus|Sacramento|Omaha|Raleigh|Tampa|Spokane|Albuquerque|Madison|Richmond|Reno|"
        "Savannah|Louisville|Buffalo|Tulsa"
    ),
    "sport": _v("pickleball|softball|volleyball|flag football|disc golf|spin class|yoga|swimming laps|kickboxing"),
    "thing": _v(
        "dishwasher|garage door|water heater|smoke alarm|car battery|wifi router|bathroom fan|porch light|"
        "washing machine|printer"
    ),
    "day": _v("Monday|Tuesday|Wednesday|Thursday|Saturday|Sunday"),
    "when": _v(
        "yesterday|last night|this morning|over the weekend|the other day|on my lunch break|after work|"
        "earlier today|a couple days ago"
    ),
    "num": [str(n) for n in range(2, 60)],
    "color": _v("sage green|navy|mustard yellow|terracotta|off-white|charcoal|teal|burgundy"),
    "doc": _v("dermatologist|dentist|eye doctor|chiropractor|orthodontist|allergist|podiatrist"),
}

_TEMPLATES = (
    "my {rel} {name} just got a {pet} named {petname}",
    "{name}'s {pet} {petname} chewed through a phone charger {when}",
    "my {rel} {name} is a {job} and works crazy hours",
    "{name} from work just quit to become a {job}",
    "my {rel} {name} swears by their {gadget}",
    "{name} dropped their {gadget} in the pool {when} lol",
    "my {rel} {name} is allergic to {food}, so no {dish} at the potluck",
    "{name} can't handle {food} at all",
    "made {dish} {when} and it came out way too salty",
    "{family} wants to paint the living room {color}",
    "{family} and I binged {show} {when}",
    "{family} found a great recipe for {dish}",
    "{family} has a dentist appointment on {day}",
    "had to run to {place} {when}, the line was insane",
    "the {thing} broke again {when}",
    "spent {num} bucks at {place} on stuff I didn't need",
    "{name} is moving to {city} for a new gig",
    "my {rel} {name} grew up in {city}",
    "my {rel} {name} wants me to try {sport} with them on {day}",
    "{name} hurt their shoulder playing {sport}",
    "watching {show} with {name} on {day}",
    "{name} recommended {show}, supposedly it gets good in season two",
    "the {thing} guy is coming {day} between 8 and noon",
    "our {thing} is making a weird clicking noise",
    "{name}'s {doc} told them to cut back on {food}",
    "I have to call the {doc} about rescheduling",
    "{family} and {name} are planning a trip to {city}",
    "the {pet} next door barks every {day} morning",
    "{name} is fostering a {pet} for the shelter",
    "{name}'s kid is obsessed with their {pet}",
    "{name} asked if I could watch their {pet} {petname} for the weekend",
    "{name} got a promotion to senior {job}",
    "picked up {dish} for dinner since nobody wanted to cook",
    "{family} burned the {dish} {when}, whole kitchen smelled like smoke",
    "{name} bought a used {gadget} for {num}0 dollars",
    "returned a {gadget} to {place} {when}",
    "{name} is doing a {num} day {sport} challenge",
    "parking at {place} was a nightmare {when}",
    "{family} wants to host {dish} night on {day}",
    "{name}'s mom lives in {city} and visits every summer",
)
_FIELD = re.compile(r"{(\w+)}")


def test_distractors(count: int, seed: int = 0, answers: list[str] | None = None) -> list[str]:
    """`count` unique distractors, none containing an answer of either test set (whole word, any case)."""
    if answers is None:
        answers = [fact.answer for fact in test_facts()] + [
            q.answer for conversation in test_sessions() for q in conversation.questions
        ]
    blocked = re.compile(
        rf"(?<!\w)(?:{'|'.join(sorted((re.escape(a.lower()) for a in answers), key=len, reverse=True))})(?!\w)"
    )
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < count:
        template = rng.choice(_TEMPLATES)
        text = template.format(**{name: rng.choice(_SLOTS[name]) for name in _FIELD.findall(template)})
        if not blocked.search(text.lower()):
            seen.setdefault(text, None)
    return list(seen)
