"""The kind of a policy, read from its own words: what it is about decides which threshold applies.

A request sends only the policy's text, so its kind is inferred from generic cues, the most telling first
(a profanity policy often says "language", a medical one "children"): a language it names, a topic it
confines replies to ("Only discuss X", whatever X is), a credential or
secret, a dosage or diagnosis, a competitor or a brand it names, a topic it forbids... and
`general` where nothing matches. Thresholds per kind are chosen on the dev set by `make eval-guardrails`
and set in models.yaml (`guardrails.kind_thresholds`); a kind without one uses the global threshold.
"""

from __future__ import annotations

import re
from typing import get_args

from server.config import PolicyKind
from server.guardrails.evidence import LANGUAGE_NAME, policy_terms
from server.guardrails.topics import allowed_topic

GENERAL: PolicyKind = "general"
KINDS: tuple[PolicyKind, ...] = get_args(PolicyKind)


def cue(*words: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(words) + r")", re.IGNORECASE)


# In order: the first kind whose cue the policy shows is its kind.
CUES: tuple[tuple[PolicyKind, re.Pattern[str]], ...] = (
    (
        "profanity",
        cue(
            r"profan",
            r"swear",
            r"curs(?:e|es|ing)\b",
            r"obscen",
            r"vulgar",
            r"expletive",
            r"crude",
            r"slurs?\b",
            r"(?:bad|foul|clean|strong)\s+language",
            r"rude\s+words",
        ),
    ),
    (
        "language",
        cue(
            r"(?:same|user'?s|one|any\s+other|other|another|foreign|a\s+single)\s+languages?\b",
            r"switch\w*\s+languages?",
            r"code-?switch",
            r"translat",
        ),
    ),
    (
        "personal_data",
        cue(
            r"personal\s+(?:data|information|details|identifiers?)",
            r"e-?mail\s+address",
            r"(?:phone|mobile|telephone)\s+numbers?",
            r"(?:home|postal|street)\s+address",
            r"date\s+of\s+birth",
            r"social\s+security",
            r"passport",
            r"(?:id|identity|identification)\s+numbers?",
            r"(?:credit|debit|bank)\s+cards?",
            r"card\s+numbers?",
            r"iban\b",
            r"pii\b",
            r"customer\s+(?:data|records|details)",
            r"contact\s+details",
            r"anyone'?s\s+address",
        ),
    ),
    (
        "secrets",
        cue(
            r"passwords?",
            r"passcodes?",
            r"passphrases?",
            r"pins?\b",
            r"credentials?",
            r"(?:api|access|secret|private|signing|ssh|license|licence|encryption)\s+keys?",
            r"tokens?\b",
            r"secrets?\b",
            r"code\s*names?",
            r"connection\s+strings?",
            r"system\s+prompt",
            r"(?:hidden|internal|system)\s+instructions",
            r"(?:access|door|entry|alarm|gate|keypad|security|admin)\s+codes?",
            r"confidential",
            r"internal\s+(?:project|roadmap|details|names?)",
        ),
    ),
    ("competitors", cue(r"competi", r"rivals?", r"brands?\b", r"other\s+(?:companies|vendors|airlines|banks|stores)")),
    (
        "medical_advice",
        cue(
            r"dos(?:e|es|age|ages|ing)\b",
            r"medic",
            r"prescri",
            r"diagnos",
            r"symptoms?",
            r"treatments?",
            r"health",
            r"drugs?\b",
            r"therap",
            r"wellness",
            r"illness",
            r"disease",
            r"doctors?\b",
            r"pharmac",
        ),
    ),
    (
        "legal_advice",
        cue(
            r"legal",
            r"laws?\b",
            r"lawyers?",
            r"attorneys?",
            r"lawsuits?",
            r"contracts?\b",
            r"immigration",
            r"court",
            r"litigat",
            r"sue\b",
            r"visa\b",
        ),
    ),
    (
        "financial_advice",
        cue(
            r"financ",
            r"invest",
            r"stocks?\b",
            r"shares\b",
            r"crypto",
            r"bitcoin",
            r"loans?\b",
            r"credit\b",
            r"retirement",
            r"savings",
            r"assets?\b",
            r"prices?\b",
            r"trading",
            r"portfolio",
            r"tax(?:es)?\b",
            r"mortgage",
            r"pension",
        ),
    ),
    (
        "inappropriate",
        cue(
            r"violen",
            r"weapons?",
            r"explosives?",
            r"bombs?\b",
            r"guns?\b",
            r"sexual",
            r"explicit",
            r"self-?harm",
            r"suicid",
            r"harm",
            r"hate",
            r"gore",
            r"graphic",
            r"nsfw",
            r"adult",
            r"inappropriate",
            r"unsafe",
            r"children",
            r"kids",
            r"minors",
            r"threat",
            r"kill",
            r"attack",
            r"fight",
            r"abus",
        ),
    ),
    (
        "tone",
        cue(
            r"polite",
            r"respectful",
            r"rude",
            r"tone\b",
            r"sarcas",
            r"condescend",
            r"passive-?aggressive",
            r"patient",
            r"encouraging",
            r"mock",
            r"insult",
            r"friendly",
            r"professional",
            r"courteous",
            r"snark",
            r"dismissive",
            r"belittl",
            r"empath",
            r"calm",
            r"formal",
        ),
    ),
    (
        "topics",
        cue(
            r"discuss",
            r"talk\s+about",
            r"topics?\b",
            r"subjects?\b",
            r"unrelated",
            r"off-?topic",
            r"only\s+(?:answer|help|respond|reply)",
            r"stick\s+to",
            r"stay\s+on",
            r"(?:answers?|replies|responses)\s+(?:about|on)\b",
            r"politic",
            r"election",
            r"religio",
            r"gambl",
            r"betting",
        ),
    ),
)


def policy_kind(policy: str) -> PolicyKind:
    """The policy's kind from its words (`general` when no cue matches). Pure."""
    if LANGUAGE_NAME.search(policy):
        return "language"
    if allowed_topic(policy) is not None:
        return "topics"  # "Only discuss X", whatever X is about
    for kind, pattern in CUES:
        if pattern.search(policy):
            return kind
    terms = policy_terms(policy)
    if set(terms.forbidden) - set(terms.secrets):
        return "competitors"  # names the policy forbids, not secret values: brands, products, companies
    return GENERAL


def kind_threshold(kind: PolicyKind, thresholds: dict[PolicyKind, float], default: float) -> float:
    """The threshold chosen for `kind`, else the global one."""
    return thresholds.get(kind, default)
