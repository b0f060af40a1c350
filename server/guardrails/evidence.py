"""Deterministic evidence from what a policy names explicitly, combined with the classifier's score.

A small cross-encoder generalises poorly to the exact strings a policy spells
out: the competitors it lists, the secret it states, the language it requires.
These are read from the policy with patterns and looked up in the text:

- named terms: names the policy forbids (competitors, codenames) and secret
  values it states (`password is 'Marigold-77'`); the policy's own brand
  (`We are X`, `X's assistant`, `our product, X`) is never one of them;
- language: the languages a policy requires or forbids, against the language of
  each sentence of the text (common-word and script identification);
- dosages: an amount with a unit of medicine, under a policy about dosages;
- medical advice: under a policy forbidding diagnoses, a condition asserted as the user's (`this sounds
  like shingles`, `you probably have strep throat`); under one forbidding recommending, stopping or changing
  medication, an unhedged instruction to (`you can just stop taking the antidepressant`, `ask your GP for
  doxycycline`); a hedged, negated or conditional one ("if you have asthma", "don't stop taking it") is not;
- personal data: e-mail addresses, phone, card, IBAN and social security
  numbers, street addresses, under a policy naming that kind of data;
- profanity: swear words and direct insults, under a policy about profanity,
  less the words the policy itself allows;
- credentials: under a policy forbidding a kind of credential it names (passwords,
  PINs, access codes, API keys, tokens, private keys, connection strings), a value
  of one stated in the text (`the password is kT9!vq2m`, a `ghp_...` token, a
  private-key block, `user:pass@` in a URL); a placeholder or a rule about them is not;
- codenames: under a policy forbidding internal codenames, a name given as one (`Project Nightjar`, `the
  'Kestrel' rewrite`, `codenamed Falcon`);
- instructions: under a policy keeping the system prompt private, the text quoting it (`my instructions
  say: '...'`, a quoted `'You are HelpBot, ...'`).

`policy_terms(policy)` parses once; `evidence(terms, text)` is per text. The
result is `VIOLATES` (a hit), `COMPLIES` (a language policy met by every
sentence) or `None` (no evidence: the classifier decides). Pure functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum


class Evidence(Enum):
    VIOLATES = "violates"
    COMPLIES = "complies"


@dataclass(frozen=True, slots=True)
class Finding:
    evidence: Evidence
    because: str  # the kind of evidence, never the text's words nor a secret's value


# ---------------------------------------------------------------- policy parsing

PROHIBITION = re.compile(
    r"\b(never|not|no|don'?t|doesn'?t|avoid|forbid\w*|prohibit\w*|refrain|confidential|secret|private|without)\b|n't\b",
    re.IGNORECASE,
)
PERMISSION = re.compile(r"\b(acceptable|allowed|permitted|fine|okay|ok|may use|can use|are accepted)\b", re.IGNORECASE)
SENTENCE_SPLIT = re.compile(r"(?<=[.!?;:])\s+|\n+")
CLAUSE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")
# A capitalised name: words starting upper-case (inner capitals, digits, '&', '-' allowed), up to four of them.
NAME = re.compile(r"\b[A-Z][\w&'\-]*(?:\s+(?:&\s+)?[A-Z][\w&\-]*){0,3}")
NOT_NAMES = {
    "never",
    "do",
    "don't",
    "dont",
    "not",
    "no",
    "only",
    "you",
    "we",
    "our",
    "the",
    "a",
    "an",
    "this",
    "that",
    "these",
    "those",
    "it",
    "its",
    "i",
    "assistant",
    "always",
    "keep",
    "stay",
    "avoid",
    "reply",
    "respond",
    "answer",
    "use",
    "be",
    "all",
    "any",
    "every",
    "each",
    "replies",
    "responses",
    "mention",
    "name",
    "refer",
    "promote",
    "recommend",
    "internal",
    "confidential",
    "secret",
    "competitors",
    "competitor",
    "rivals",
    "rival",
    "other",
    "others",
    "such",
    "like",
    "including",
    "e.g",
    "eg",
    "for",
    "if",
    "when",
    "under",
    "as",
    "in",
    "on",
    "at",
    "with",
    "must",
    "should",
    "may",
    "please",
    "policy",
    "rule",
    "rules",
    "project",
    "codename",
    "password",
    "company",
    "brand",
    "product",
    "products",
    "staff",
    "customers",
    "users",
    "user",
    "ai",
    "english",
    "spanish",
    "french",
    "german",
    "italian",
    "portuguese",
    "dutch",
    "polish",
    "swedish",
    "chinese",
    "japanese",
    "korean",
    "russian",
    "arabic",
    "hindi",
    "turkish",
    "id",
    "ids",
    "api",
    "apis",
    "pin",
    "pins",
    "ssn",
    "iban",
    "ip",
    "url",
    "urls",
    "pdf",
    "ceo",
    "faq",
    "vpn",
    "wifi",
    "wi-fi",
    "sms",
    "otp",
    "pii",
    "social",
    "security",
    "social security",
    "gdpr",
    "hipaa",
    "ok",
    "okay",
    "note",
    "important",
    "warning",
}
OWN_BRAND_CUES = re.compile(
    r"(?:\bwe\s+are|\bwe'?re|\bwe\s+sell|\bwe\s+make|\bassistant\s+(?:for|of|at)|\bbot\s+(?:for|of)|"
    r"\bsupport\s+(?:for|at)|\bwork\s+(?:for|at)|\binside|\bwithin|"
    r"\bour\s+(?:own\s+)?(?:brand|company|product|service|app|store|shop|bank|platform|business|firm)s?"
    r"(?:\s+is|\s+are|\s+called|\s+named)?,?|"
    r"\bon\s+behalf\s+of|\brepresent(?:ing|s)?|\bworking\s+for|\bhere\s+at)\s+(?:the\s+|a\s+|an\s+)?$",
    re.IGNORECASE,
)
COMPETITOR_CUE = re.compile(
    r"\b(competitors?|competing|rivals?|other\s+\w+|such\s+as|like|including|e\.g\.|mention|name|recommend|"
    r"refer\s+to|talk\s+about|bring\s+up|discuss|reveal|disclose|share)\b",
    re.IGNORECASE,
)
SECRET_VALUE = re.compile(
    r"\b(?:password|passcode|passphrase|pass|pw|pin|code|codename|code\s+name|key|token|secret|combination)"
    r"(?:\s+(?:is|was|reads))?\s*(?:[:=]|\bis\b)?\s*['\"“‘]?([^\s'\"”’,;)]{4,})",
    re.IGNORECASE,
)
QUOTED = re.compile(r"['\"“‘]([^'\"“”‘’]{3,40})['\"”’]")
# A token that looks like a credential or codename: mixed letters and digits, or an upper-case word.
CREDENTIAL_LIKE = re.compile(r"^(?=.*[A-Za-z])(?=.*\d)\S{5,}$|^[A-Z]{5,}$")

LANGUAGE_NAMES = {
    "english": "en",
    "spanish": "es",
    "castilian": "es",
    "french": "fr",
    "german": "de",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "polish": "pl",
    "swedish": "sv",
    "chinese": "zh",
    "mandarin": "zh",
    "japanese": "ja",
    "korean": "ko",
    "russian": "ru",
    "arabic": "ar",
    "greek": "el",
    "hebrew": "he",
    "hindi": "hi",
    "thai": "th",
    "ukrainian": "ru",
    "turkish": "tr",
}
LANGUAGE_NAME = re.compile(r"\b(" + "|".join(LANGUAGE_NAMES) + r")\b", re.IGNORECASE)
ONLY = re.compile(
    r"\b(only|exclusively|solely|must|always|all\s+(?:responses|replies|answers|output))\b", re.IGNORECASE
)

DOSAGE_POLICY = re.compile(
    r"\b(dos(?:e|es|age|ages|ing)|how\s+much\s+(?:medicine|medication)|posology)\b", re.IGNORECASE
)
PROFANITY_POLICY = re.compile(
    r"\b(profan\w*|swear\w*|curs(?:e|es|ing)|obscen\w*|vulgar\w*|expletive\w*|bad\s+language|foul\s+language|"
    r"insult\w*|clean\s+language|language\s+clean|rude\s+words)\b",
    re.IGNORECASE,
)
# A policy that forbids insulting the user: `DIRECTED_INSULT` is then evidence.
INSULT_POLICY = re.compile(r"\b(insult\w*|demean\w*|belittl\w*|disparag\w*|name-?calling)\b", re.IGNORECASE)
# A policy about swearing alone (no insults, slurs, tone): the lexicon knows what it forbids.
SWEARING_ONLY = re.compile(
    r"\b(profan\w*|swear\s*words?|swearing|curse\s*words?|cursing|obscen\w*|expletive\w*)\b", re.IGNORECASE
)
NOT_SWEARING_ONLY = re.compile(
    r"\b(insult\w*|slurs?|rude|offensive|mock\w*|tone|demean\w*|disrespect\w*|hate|harass\w*|threat\w*|"
    r"at\s+the\s+user|at\s+anyone|at\s+people|crude|sexual|vulgar\w*)\b",
    re.IGNORECASE,
)

CREDENTIAL_POLICY = re.compile(
    r"\b(passwords?|passcodes?|passphrases?|pins?|credentials?|(?:api|access|secret|private|signing|ssh|license|"
    r"licence|master|encryption)\s+keys?|(?:access\s+|auth\w*\s+|bearer\s+)?tokens?|(?:access|door|entry|"
    r"alarm|gate|keypad|security|admin)\s+codes?|connection\s+strings?)\b",
    re.IGNORECASE,
)

PII_KINDS = {
    "email": re.compile(
        r"\be-?mails?\b|\bcontact\s+details\b|\bpersonal\s+(?:data|information|details)\b", re.IGNORECASE
    ),
    "phone": re.compile(
        r"\bphone|\bmobile\s+numbers?|\btelephone|\bcontact\s+details\b|\bpersonal\s+(?:data|information|details)\b",
        re.IGNORECASE,
    ),
    "card": re.compile(
        r"\b(?:credit|debit|payment|bank)\s*cards?\b|\bcard\s+numbers?\b|\bbank(?:ing)?\s+(?:account|details)|\biban\b|\baccount\s+numbers?\b|\bfinancial\s+details\b",
        re.IGNORECASE,
    ),
    "ssn": re.compile(
        r"\bsocial\s+security|\bssns?\b|\bnational\s+insurance|\bid\s+numbers?\b|\bpersonal\s+(?:data|information|details)\b",
        re.IGNORECASE,
    ),
    "address": re.compile(
        r"(?<!email )(?<!e-mail )\baddress(?:es)?\b|\bwhere\s+\w+\s+lives?\b|\bpersonal\s+(?:data|information|details)\b",
        re.IGNORECASE,
    ),
}


@dataclass(frozen=True, slots=True)
class PolicyTerms:
    """What a policy names explicitly; empty fields mean no evidence of that kind."""

    forbidden: tuple[str, ...] = ()  # names and secret values the text must not contain
    secrets: tuple[str, ...] = ()  # the secret values among them: never repeated in a reason
    own: tuple[str, ...] = ()  # the policy's own brand: never evidence of a violation
    required_languages: frozenset[str] = frozenset()
    forbidden_languages: frozenset[str] = frozenset()
    language_only: bool = False  # every rule of the policy is about language: meeting it is compliance
    dosage: bool = False
    diagnosis: bool = False  # the policy forbids diagnosing
    medication: bool = False  # the policy forbids recommending, stopping or changing medication
    profanity: bool = False
    swearing_only: bool = False  # every rule is about swear words: no lexicon hit is compliance
    insults: bool = False  # the policy forbids insulting the user
    allowed_words: frozenset[str] = frozenset()
    pii: frozenset[str] = field(default_factory=frozenset)
    credentials: bool = False  # the policy forbids revealing a kind of credential it names
    instructions: bool = False  # the policy forbids revealing the system prompt or the assistant's instructions
    codenames: bool = False  # the policy forbids revealing internal codenames

    @property
    def empty(self) -> bool:
        return not (
            self.forbidden
            or self.required_languages
            or self.forbidden_languages
            or self.dosage
            or self.diagnosis
            or self.medication
            or self.profanity
            or self.insults
            or self.pii
            or self.credentials
            or self.instructions
            or self.codenames
        )


def sentences(text: str) -> list[str]:
    return [part.strip() for part in CLAUSE_SPLIT.split(text) if part.strip()]


def policy_names(sentence: str) -> list[tuple[str, int]]:
    """Capitalised names in a policy sentence with their offsets, less leading function words."""
    names = []
    for match in NAME.finditer(sentence):
        words = match.group(0).split()
        start = match.start()
        while words and words[0].lower().strip("'") in NOT_NAMES:
            start = sentence.index(words[1], start + len(words[0])) if len(words) > 1 else start
            words = words[1:]
        while words and words[-1].lower().strip("'") in NOT_NAMES:
            words = words[:-1]
        name = " ".join(words).removesuffix("'s").removesuffix("’s").strip("-'")
        if len(name) >= 2 and name.lower() not in NOT_NAMES:
            names.append((name, start))
    return names


def own_brands(policy: str) -> set[str]:
    own = set()
    for sentence in sentences(policy):
        for name, start in policy_names(sentence):
            before = sentence[:start]
            after = sentence[start + len(name) :]
            if OWN_BRAND_CUES.search(before) or re.match(
                r"^['’]s\s+(?:own\s+)?(?:assistant|bot|support|helper)", after
            ):
                own.add(name)
    return own


def secret_values(policy: str) -> list[str]:
    """Values the policy states as secrets: `password is 'x'`, `codename: X`, a quoted credential-like token."""
    found = []
    for match in SECRET_VALUE.finditer(policy):
        value = match.group(1).rstrip(".")
        if CREDENTIAL_LIKE.match(value) or QUOTED.search(policy[match.start() : match.end() + 1]):
            found.append(value)
    for match in QUOTED.finditer(policy):
        if CREDENTIAL_LIKE.match(match.group(1).strip()):
            found.append(match.group(1).strip())
    return list(dict.fromkeys(found))


def forbidden_terms(policy: str, own: set[str]) -> list[str]:
    """Names in sentences that forbid something (and are not ours), plus secret values the policy states."""
    found: list[str] = []
    policy_sentences = sentences(policy)
    prohibits = any(PROHIBITION.search(sentence) for sentence in policy_sentences)
    for sentence in policy_sentences:
        if PERMISSION.search(sentence) or LANGUAGE_NAME.search(sentence):
            continue
        forbidding = PROHIBITION.search(sentence) or (
            prohibits and re.search(r"\b(competitors?|rivals?|codename|secret)\b", sentence, re.IGNORECASE)
        )
        if not forbidding:
            continue
        for name, start in policy_names(sentence):
            if start == 0 and " " not in name and name[1:].islower() and policy.count(name) == 1:
                continue  # a sentence's first word ("Refrain from ..."), not a name
            if name not in own and not any(name in brand or brand in name for brand in own):
                found.append(name)
    found += secret_values(policy)
    for match in QUOTED.finditer(policy):
        value = match.group(1).strip()
        sentence = next((s for s in policy_sentences if match.group(0) in s), "")
        quotable = (CREDENTIAL_LIKE.match(value) or " " not in value) and not PERMISSION.search(sentence)
        if quotable and PROHIBITION.search(sentence) and value.lower() not in NOT_NAMES:
            found.append(value)
    return list(dict.fromkeys(term for term in found if term and term not in own))


def language_rules(policy: str) -> tuple[frozenset[str], frozenset[str], bool]:
    """(required, forbidden, language_only): the languages a policy asks for and those it rules out."""
    required: set[str] = set()
    forbidden: set[str] = set()
    rules = 0
    language_rules_seen = 0
    for clause in re.split(r"(?<=[.!?;])\s+|\n+|,\s*(?=(?:but|and)\s)", policy):
        if not clause.strip():
            continue
        names = [LANGUAGE_NAMES[m.group(1).lower()] for m in LANGUAGE_NAME.finditer(clause)]
        is_rule = bool(
            PROHIBITION.search(clause)
            or ONLY.search(clause)
            or re.search(r"\b(reply|respond|answer|write|use|speak)\b", clause, re.IGNORECASE)
        )
        if is_rule:
            rules += 1
        if not names:
            continue
        language_rules_seen += 1
        negation = PROHIBITION.search(clause)
        for match in LANGUAGE_NAME.finditer(clause):
            code = LANGUAGE_NAMES[match.group(1).lower()]
            between = clause[negation.end() : match.start()] if negation else ""
            if re.search(
                r"\b(other\s+than|except|besides|apart\s+from|but)\s+$", clause[: match.start()], re.IGNORECASE
            ):
                required.add(code)
            elif negation and negation.start() < match.start() and not ONLY.search(between):
                forbidden.add(code)
            else:
                required.add(code)
    if "foreign" in policy.lower() and required:
        pass  # "English only, no foreign phrases": the required set already says it
    return (
        frozenset(required - forbidden),
        frozenset(forbidden),
        bool(required or forbidden) and rules <= language_rules_seen,
    )


def permitted_words(policy: str) -> frozenset[str]:
    words: set[str] = set()
    for sentence in sentences(policy):
        if PERMISSION.search(sentence):
            words |= {w.lower() for w in re.findall(r"['\"“‘]?([A-Za-z*]+)['\"”’]?", sentence)}
    return frozenset(words)


def policy_terms(policy: str) -> PolicyTerms:
    own = own_brands(policy)
    required, forbidden_langs, language_only = language_rules(policy)
    return PolicyTerms(
        forbidden=tuple(forbidden_terms(policy, own)),
        secrets=tuple(value for value in secret_values(policy) if value not in own),
        own=tuple(sorted(own, key=len, reverse=True)),
        required_languages=required,
        forbidden_languages=forbidden_langs,
        language_only=language_only,
        dosage=bool(DOSAGE_POLICY.search(policy)),
        diagnosis=forbids(policy, DIAGNOSIS_POLICY),
        medication=forbids(policy, MEDICATION_POLICY),
        profanity=bool(PROFANITY_POLICY.search(policy)),
        swearing_only=bool(SWEARING_ONLY.search(policy)) and not NOT_SWEARING_ONLY.search(policy),
        insults=bool(INSULT_POLICY.search(policy)),
        allowed_words=permitted_words(policy),
        pii=frozenset(kind for kind, pattern in PII_KINDS.items() if pattern.search(policy)),
        codenames=forbids(policy, CODENAME_POLICY),
        instructions=any(
            INSTRUCTIONS_POLICY.search(sentence) and PROHIBITION.search(sentence) and not PERMISSION.search(sentence)
            for sentence in sentences(policy)
        ),
        credentials=any(
            CREDENTIAL_POLICY.search(sentence) and PROHIBITION.search(sentence) and not PERMISSION.search(sentence)
            for sentence in sentences(policy)
        ),
    )


# ---------------------------------------------------------------- language identification

COMMON_WORDS = {
    "en": "the and is are was you your to of in it for that this with on be have has not we our can will at "
    "from by or as do does an if my me they their there what which would should could about please thank thanks "
    "hello hi yes sure here how when all just more one up out so",
    "es": "el la los las de del que y en un una es por con para su sus se lo al como más pero le ya muy "
    "está están son fue hola gracias usted puedo puede ayudarte ayudarle hoy qué cómo dónde cuál bien sí "
    "también estoy tengo tiene mañana nos nuestro nuestra esta este te eso esto tu tus mi mis ti ayudo primero "
    "abre aquí ahora hay hacer desde porque cuando todo todos ella él ellos usted ustedes vez",
    "fr": "le la les de des du et est un une en que qui pour pas dans sur avec au aux ce cette vous nous je "
    "il elle ils sont bonjour merci votre vos mais ou très bien être avoir peux pouvez sûr oui quel quelle "
    "numéro commande aujourd'hui c'est ne se sa son ses mon ma mes ton ta tes leur leurs ici voici voilà "
    "aussi comme tout tous faire",
    "de": "der die das und ist nicht ein eine ich sie es zu mit den dem des auf für von im wir ihr ihre ihnen "
    "sind wird werden bitte danke vielen hallo guten natürlich ja nein auch noch nur wie was wo bis bald "
    "morgen heute erfolgt innerhalb ist das haben hat kann können sich mein dein unser euer dieser diese "
    "oder aber wenn weil schon sehr gern",
    "it": "il lo la gli le di e è un una che per non con del della in al ma sono come anche più ciao grazie "
    "buongiorno certo sì arriverà entro giorni lavorativi questo questa molto bene può posso ti mi ci si "
    "sei siamo hai ha abbiamo qui ecco perché quando tutto",
    "pt": "o a os as de do da dos das e é um uma que para com não em no na por seu sua você obrigado "
    "obrigada olá sim muito bem está são pode posso também isso",
    "nl": "de het een en is van ik je jij we wij zijn niet met op voor dat die er maar ook hallo bedankt "
    "dank graag alstublieft morgen",
    "pl": "i w na z że się nie jest to do jak co ale od po czy dla tak dzień dobry dziękuję proszę jestem "
    "pan pani jutro",
    "sv": "och att det som en är på för med inte jag du vi till av har hej tack mycket",
}
COMMON = {code: frozenset(words.split()) for code, words in COMMON_WORDS.items()}
# Words English shares with another language ("a", "I", "as", "in"): in an English text they are English, so they
# count for no other language ("We're a", "Sorry, I" and "As a customer" read as Portuguese and Polish before).
ENGLISH_TOO = COMMON["en"] | {"a", "i"}
LETTER_CUES = {
    "es": "ñ¿¡",
    "de": "ßäöü",
    "fr": "çœêëîû",
    "pt": "ãõ",
    "pl": "ąęłńśźżć",
    "it": "",
    "nl": "",
    "sv": "å",
}
SCRIPTS = (
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("el", re.compile(r"[\u0370-\u03ff]")),
    ("he", re.compile(r"[\u0590-\u05ff]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
)
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def sentence_language(sentence: str) -> str | None:
    """The sentence's language code, or None when there is too little to tell."""
    letters = [ch for ch in sentence if ch.isalpha()]
    if not letters:
        return None
    for code, script in SCRIPTS:
        if len(script.findall(sentence)) >= max(2, len(letters) // 3):
            return "ja" if code == "zh" and SCRIPTS[1][1].search(sentence) else code
    words = [word.lower() for word in WORD.findall(sentence)]
    scores = {
        code: sum(word in common and (code == "en" or word not in ENGLISH_TOO) for word in words)
        for code, common in COMMON.items()
    }
    lowered = sentence.lower()
    for code, cues in LETTER_CUES.items():
        scores[code] += 2 * sum(lowered.count(cue) for cue in cues)
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    (best, top), (_, second) = ranked[0], ranked[1]
    if top >= 2 and top >= 2 * second and top >= 0.25 * len(words):
        return best
    if len(words) <= 3 and top >= 1 and top > second and best != "en":
        return best
    return None


def text_languages(text: str) -> list[str | None]:
    """The language of each sentence, and of the whole text (short sentences say little on their own)."""
    parts = [part for part in re.split(r"(?<=[.!?。！？])\s*|\n+", text) if part.strip()]
    return [sentence_language(part) for part in parts] + ([sentence_language(text)] if len(parts) > 1 else [])


# ---------------------------------------------------------------- text patterns

NUMBER_WORDS = (
    r"(?:\d+(?:[.,]\d+)?|half|a\s+half|one|two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|"
    r"a|an|a\s+quarter(?:\s+of)?(?:\s+a)?|one\s+and\s+a\s+half|a\s+couple\s+of|a\s+few)"
)
DOSE_UNIT = (
    r"(?:mg|milligrams?|mcg|µg|micrograms?|g|grams?|ml|mls|millilit(?:re|er)s?|cc|iu|units?|tablets?|pills?|"
    r"capsules?|caplets?|drops?|puffs?|sprays?|teaspoons?(?:ful)?|tsp|tablespoons?|tbsp|doses?|sachets?|lozenges?)"
)
DOSAGE = re.compile(rf"\b{NUMBER_WORDS}\s*(?:-|\s)?\s*{DOSE_UNIT}\b", re.IGNORECASE)
DOSE_FREQUENCY = re.compile(
    r"\b(every\s+(?:\d+|two|three|four|five|six|eight|twelve)\s*(?:-\s*\d+\s*)?hours?|(?:once|twice|three\s+times|"
    r"four\s+times|\d\s*x)\s+(?:a|per|each)\s+day|(?:once|twice)\s+daily|at\s+bedtime|before\s+(?:bed|meals))\b",
    re.IGNORECASE,
)
MEDICINE = re.compile(
    r"\b(syrup|tablet|pill|capsule|dose|medicine|medication|paracetamol|acetaminophen|ibuprofen|aspirin|"
    r"amoxicillin|antibiotic|insulin|drops|inhaler|\w+(?:cillin|mycin|profen|olol|pril|statin|azole|zepam))\b",
    re.IGNORECASE,
)
DIAGNOSIS_POLICY = re.compile(r"\bdiagnos\w*", re.IGNORECASE)
MEDICATION_POLICY = re.compile(
    r"\b(?:recommend|suggest|prescrib|name|stop|chang|adjust|switch|skip|quit|alter|modify)\w*\b[^.;]{0,40}?"
    r"\b(?:medications?|medicines?|meds|drugs?|prescriptions?|pills|antibiotics?|treatments?)\b",
    re.IGNORECASE,
)
CONDITION = (
    r"(?:\w+(?:itis|osis|emia|aemia|pathy|algia)|(?:\w+\s+)?infection|flu|influenza|(?:a\s+|the\s+)?cold|virus|"
    r"(?:\w+\s+)?syndrome|(?:\w+\s+)?disorder|(?:\w+\s+)?disease|fracture|sprain|(?:\w+\s+)?deficiency|allergy|"
    r"migraines?|(?:type\s+[12]\s+)?diabetes|asthma|strep(?:\s+throat)?|pneumonia|concussion|depression|anxiety|"
    r"adhd|ulcer|hernia|reflux|gerd|eczema|psoriasis|shingles|uti|covid(?:-19)?|hypertension|gout|measles|"
    r"chickenpox|lupus|celiac|ibs|sciatica|vertigo|insomnia|(?:pulled|strained|torn)\s+(?:\w+\s+)?muscle|"
    r"(?:\w+\s+)?tear|food\s+poisoning|pink\s+eye|(?:kidney|gall)\s*stones?|a\s+stroke|heart\s+attack)"
)
DIAGNOSIS = re.compile(
    r"\b(?:you(?:'ve\s+got|\s+have\s+got|\s+have|'re\s+(?:suffering|dealing)\s+(?:from|with)|\s+(?:probably|likely|"
    r"most\s+likely|clearly|definitely|almost\s+certainly)\s+(?:have|got)|\s+(?:might|may|could)\s+have)|"
    r"(?:it|this|that)\s+(?:sounds|looks|seems)\s+like|(?:it|this|that)(?:'s|\s+is)\s+(?:probably|likely|most\s+likely|"
    r"almost\s+certainly|definitely|clearly)(?:\s+just)?|(?:classic|typical|textbook|clear)\s+(?:signs?|case|"
    r"symptoms?)\s+of|(?:mean|means|indicate|indicates|point\s+to|points\s+to)\s+(?:that\s+)?(?:you\s+have\s+)?)"
    rf"\s+(?:a\s+|an\s+|the\s+|some\s+|mild\s+|severe\s+|early\s+|bad\s+)?(?:\w+\s+){{0,2}}?{CONDITION}\b",
    re.IGNORECASE,
)
DRUG = (
    r"(?:\w+(?:cillin|mycin|cycline|floxacin|profen|olol|pril|sartan|statin|azole|prazole|zepam|zolam|oxetine|"
    r"aline|pram|triptan|dronate|tidine|semide|afil|codone|morphine|sone|olone|pine|pam|mab|xaban|gliptin|formin)s?|"
    r"statins?|paracetamol|acetaminophen|ibuprofen|aspirin|naproxen|insulin|warfarin|lithium|melatonin|antibiotics?|"
    r"antidepressants?|ssris?|benzodiazepines?|benzos|opioids?|steroids?|sleeping\s+pills|blood\s+thinners?|"
    r"antihistamines?|medications?|medicines?|meds|pills|tablets|prescriptions?|inhalers?|dose|doses|dosage)"
)
MEDICATION_CHANGE = re.compile(
    r"\b(?:stop|quit|skip|halve|double|reduce|lower|increase|cut\s+(?:back|down)\s+on|come\s+off|taper\s+off|"
    r"switch\s+(?:from|to)|go\s+off|ditch|drop|swap)\s+(?:taking\s+|using\s+)?(?:your\s+|the\s+|that\s+|those\s+|"
    rf"this\s+|these\s+|their\s+|his\s+|her\s+|my\s+)?(?:\w+\s+){{0,2}}?{DRUG}\b",
    re.IGNORECASE,
)
MEDICATION_ADVICE = re.compile(
    r"\b(?:ask\s+(?:your\s+)?(?:doctor|gp|physician|prescriber|pharmacist)?\s*(?:for|about\s+(?:getting|trying))|"
    r"get\s+(?:a\s+prescription|prescribed)\s+(?:for\s+)?|you\s+(?:should|could|can|need\s+to|ought\s+to)\s+"
    r"(?:take|try|use|get|start(?:\s+on)?)|(?:i|we)(?:'d|\s+would)?\s+(?:recommend|suggest)|(?:best|right)\s+"
    r"(?:option|choice|bet|medicine|medication)\s+(?:is|would\s+be)|go\s+with|start\s+(?:on|taking))\s+"
    rf"(?:some\s+|a\s+course\s+of\s+|an?\s+)?(?:\w+\s+){{0,2}}?(?!(?:medications?|medicines?|meds|pills|tablets|"
    rf"prescriptions?|inhalers?|dose|doses|dosage)\b){DRUG}\b",
    re.IGNORECASE,
)
UNASSERTED = re.compile(
    r"\b(?:if|whether|when|unless|in\s+case|can'?t|cannot|unable|not\s+able|won'?t|don'?t|do\s+not|never|"
    r"shouldn'?t|should\s+not|without|not\s+sure|only\s+a\s+doctor|a\s+doctor\s+can|rule\s+out)\b",
    re.IGNORECASE,
)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
PHONE = re.compile(r"(?<![\w/])\+?\(?\d[\d ()\-.]{7,}\d(?![\w/])")
CARD = re.compile(r"\b(?:\d[ -]?){13,19}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){3,7}(?:\s?[A-Z0-9]{1,4})?\b")
SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b|\b(?:ssn|social\s+security(?:\s+number)?)\b[^.]{0,20}\d{4}", re.IGNORECASE)
STREET = re.compile(
    r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Road|Rd|Lane|Ln|Avenue|Ave|Drive|Dr|Way|Close|Court|Ct|"
    r"Place|Pl|Boulevard|Blvd|Terrace|Crescent|Gardens|Square)\b"
)
PROFANITY_WORDS = (
    r"fuck\w*|f\*+k?\w*|f\*ck\w*|motherf\w*|shits?|shitty|shit(?:show|head|hole|storm)s?|bullshit|s\*+t|sh\*t|"
    r"crap|crappy|damn|damned|damnit|dammit|goddamn\w*|bitch\w*|bastards?|assholes?|arseholes?|a\*+hole|"
    r"dickheads?|piss(?:ed)?(?:\s+off)?|bollocks|wtf|ffs|stfu|cunts?|twats?|wankers?|dumbass\w*|jackass\w*|"
    r"morons?|moronic|idiots?|idiotic|imbeciles?|retards?|retarded|douche\w*|pricks?|screw\s+you|"
    r"(?:what|who|where|why|how)\s+the\s+(?:hell|heck)|"
    r"bloody(?!\s+(?:mary|marys|nose|noses|lip|lips|wound|wounds|battle|battles|war|wars|sunday|footprints?))|"
    # a censored swear word: letters around asterisks (f***, s***ty, b*tch), never a lone footnote mark
    # (a word of four letters or more before the stars is a markdown bold span's end: "**your data**")
    r"[a-z]{1,3}\*{2,}[a-z]*|[a-z]+\*+[a-z]+"
)
PROFANITY = re.compile(rf"(?<![\w*-])(?:{PROFANITY_WORDS})(?![\w*-])", re.IGNORECASE)
# The user called a name with no swear word ("you are the most useless and pathetic person"): "you are" followed
# only by intensifiers and articles, so "you are not stupid" and "you are worried it is useless" are no insult.
DIRECTED_INSULT = re.compile(
    r"\byou(?:'re|\s+are|\s+were|r\s+(?:question|idea|work|answer)\s+(?:is|was))\s+"
    r"(?:(?:such|so|really|truly|very|completely|totally|utterly|absolutely|just|simply|clearly|honestly|"
    r"the\s+most|most|a|an|the|one\s+of\s+the\s+most)\s+)*"
    r"(?:useless|pathetic|worthless|stupid|dumb|incompetent|hopeless|clueless|brainless|ignorant|lazy|ugly|"
    r"disgusting|losers?|fools?|foolish|an\s+embarrassment|a\s+(?:joke|disgrace|waste\s+of\s+(?:time|space)))\b",
    re.IGNORECASE,
)
# Markdown emphasis (`**1. Backup your data**`, the served model's lists): its stars are no censored word.
MARKDOWN_EMPHASIS = re.compile(r"(?<![\w*])\*{1,2}(?=[^\s*])([^*\n]*?[^\s*])\*{1,2}(?![\w*])")
TERM_BOUNDARY = r"(?<![\w-]){}(?![\w-])"
BUSINESS_LINE = re.compile(
    r"\b(hotline|helpline|support|customer\s+service|toll-?free|switchboard|reception|office|main\s+line)\b",
    re.IGNORECASE,
)


STATED_CREDENTIAL = re.compile(
    r"\b(password|passcode|passphrase|pin|code|key|token|secret)s?\b(?:\s+[\w'-]+){0,4}?\s*(?:\bis\b|\bwas\b|:|=)"
    r"\s*(['\"“‘]?)([^\s'\"”’,;)]{4,})(['\"”’]?)",
    re.IGNORECASE,
)
PLACEHOLDER = re.compile(
    r"^(?:\*+|x+|\.+|<.*>|\[.*\]|\{.*\}|(?:your|my|the|new|old|secret|example|sample|dummy|placeholder|changeme|"
    r"password|passcode|token|key|value|here|hidden|redacted|required|blank|empty)(?:[_-]\w*)?)$",
    re.IGNORECASE,
)
CREDENTIAL_FORMS = re.compile(
    r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}|\bsk-[A-Za-z0-9-]{12,}|\bgh[pousr]_[A-Za-z0-9]{16,}|"
    r"\bxox[abpr]-[A-Za-z0-9-]{10,}|\bAKIA[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----|"
    r"\bBearer\s+[A-Za-z0-9._~+/-]{16,}"
)
URL_CREDENTIAL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:([^\s@/]+)@", re.IGNORECASE)
INSTRUCTIONS_POLICY = re.compile(
    r"\b(system\s+(?:prompt|message|instructions?)|(?:hidden|internal|original|initial|operator'?s?|developer)\s+"
    r"(?:prompt|instructions?|guidelines|rules)|(?:your|its|the\s+assistant'?s)\s+(?:own\s+)?(?:prompt|"
    r"instructions?|configuration|setup)|pre-?prompt)\b",
    re.IGNORECASE,
)
QUOTED_INSTRUCTIONS = re.compile(
    r"\b(?:my|the|its|our)\s+(?:\w+\s+){0,2}(?:system\s+prompt|prompt|instructions?|setup|guidelines|configuration|"
    r"rules|directives)\b[^.!?'\"“‘]{0,40}?\b(?:says?|said|is|are|reads?|was|goes|(?:begins?|starts?)(?:\s+with)?)\b"
    r"\s*(?:like\s+this|as\s+follows)?\s*:?\s*['\"“‘][^'\"”’]{12,}",
    re.IGNORECASE,
)
CODENAME_POLICY = re.compile(r"\bcode\s*-?\s*names?\b|\binternal\s+(?:project\s+)?names?\b", re.IGNORECASE)
# A name given as a codename: `Project Nightjar`, `codenamed Falcon`, `internally called Atlas`, `the 'Kestrel'
# rewrite` (a quoted capitalised word naming a piece of work).
CODENAME = re.compile(
    r"\b(?:Project|Operation|[Cc]ode-?\s?named?|[Cc]ode\s+name\s+(?:is\s+)?|[Ii]nternally\s+(?:called|known\s+as|"
    r"named|dubbed))\s+['\"“‘]?(?!(?:Managers?|Management|Settings|Plans?|Overview|Teams?|Leads?|Owners?|"
    r"Details|Pages?|Boards?|Files?|Folders?|Members?|Goals?|Status)\b)[A-Z][a-z]+\b|"
    r"['\"“‘][A-Z][a-z]+['\"”’]\s+(?:rewrite|project|release|initiative|launch|feature|effort|program(?:me)?|"
    r"build|update|redesign|migration|platform|prototype)\b"
)
QUOTED_PERSONA = re.compile(r"['\"“‘]You\s+are\s+(?:an?\s+|the\s+)?[A-Z][\w-]*[^'\"”’]{8,}['\"”’]")
MIXED_VALUE = re.compile(r"^(?=.*[A-Za-z])(?=.*\d)\S{5,}$")
DIGIT_CODE = re.compile(r"^\d(?:[\s-]?\d){3,}$")


def stated_credential(text: str) -> bool:
    """A credential's value in the text: a known token form, `user:secret@` in a URL, or a named credential
    followed by a value mixing letters and digits (a PIN or code: four digits or more), or by any quoted value
    but a placeholder (`password is 'sunflower'`, not `'********'` nor `'your_password'`)."""
    if CREDENTIAL_FORMS.search(text):
        return True
    if any(MIXED_VALUE.match(match.group(1)) for match in URL_CREDENTIAL.finditer(text)):
        return True
    for match in STATED_CREDENTIAL.finditer(text):
        opening, value, closing = match.group(2), match.group(3).rstrip(".!?:"), match.group(4)
        digits_only = match.group(1).lower() in {"pin", "code", "passcode"} and DIGIT_CODE.match(value)
        quoted = bool(opening and closing) and not PLACEHOLDER.match(value)  # `password is 'sunflower'`
        if MIXED_VALUE.match(value) or digits_only or quoted:
            return True
    return False


def quoted_instructions(text: str) -> bool:
    """The assistant's own instructions quoted: `my instructions say: '...'`, `my setup is "You are ..."`,
    or a quoted system-prompt opening (`'You are HelpBot, ...'`); a mere mention of them is not."""
    return bool(QUOTED_INSTRUCTIONS.search(text) or QUOTED_PERSONA.search(text))


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def contains_term(text: str, term: str) -> bool:
    pattern = TERM_BOUNDARY.format(re.escape(term))
    flags = 0 if CREDENTIAL_LIKE.match(term) and not term.isupper() else re.IGNORECASE
    return re.search(pattern, text, flags) is not None


def personal_data(text: str, kinds: frozenset[str]) -> bool:
    if "email" in kinds and EMAIL.search(text):
        return True
    if "card" in kinds:
        if IBAN.search(text):
            return True
        for match in CARD.finditer(text):
            digits = re.sub(r"\D", "", match.group(0))
            if 13 <= len(digits) <= 19 and luhn_valid(digits):
                return True
    if "ssn" in kinds and SSN.search(text):
        return True
    if "address" in kinds and STREET.search(text):
        return True
    if "phone" in kinds:
        for match in PHONE.finditer(text):
            if BUSINESS_LINE.search(text[max(0, match.start() - 60) : match.start()]):
                continue  # a public business line, not a person's number
            digits = re.sub(r"\D", "", match.group(0))
            if 9 <= len(digits) <= 15 and not re.fullmatch(r"\d{1,3}(?:,\d{3})+", match.group(0).strip()):
                return True
    return False


def forbids(policy: str, pattern: re.Pattern[str]) -> bool:
    """Whether a sentence of the policy forbids what `pattern` names."""
    return any(
        pattern.search(sentence) and PROHIBITION.search(sentence) and not PERMISSION.search(sentence)
        for sentence in sentences(policy)
    )


def asserted(pattern: re.Pattern[str], text: str) -> bool:
    """A match of `pattern` in a clause that does not hedge, negate or condition it before the match
    ("I can't tell whether you have the flu", "if you have asthma", "don't stop taking it")."""
    for sentence in sentences(text):
        for match in pattern.finditer(sentence):
            clause = sentence[: match.start()].rsplit(",", 1)[-1]  # "If it bothers you, stop taking it"
            if not UNASSERTED.search(clause):
                return True
    return False


def dosage_instruction(text: str) -> bool:
    """An amount with a unit of medicine; a count of tablets or spoons needs a medicine or a schedule nearby."""
    for match in DOSAGE.finditer(text):
        unit = match.group(0).lower()
        if re.search(r"\d\s*-?\s*(mg|mcg|µg|ml|iu|milligram|microgram|millilit)", unit):
            return True
        window = text[max(0, match.start() - 80) : match.end() + 80]
        if MEDICINE.search(window) or DOSE_FREQUENCY.search(window):
            return True
    return False


def evidence(terms: PolicyTerms, text: str) -> Finding | None:
    """What the policy's explicit terms say about `text`: a violation, compliance, or nothing."""
    if terms.empty:
        return None
    for term in terms.forbidden:
        if contains_term(text, term):
            return Finding(Evidence.VIOLATES, "it contains a name or value the policy forbids")
    if terms.codenames and CODENAME.search(text):
        return Finding(Evidence.VIOLATES, "it names an internal codename")
    if terms.instructions and quoted_instructions(text):
        return Finding(Evidence.VIOLATES, "it quotes the instructions the policy keeps private")
    if terms.credentials and stated_credential(text):
        return Finding(Evidence.VIOLATES, "it states a credential of a kind the policy forbids revealing")
    if terms.dosage and dosage_instruction(text):
        return Finding(Evidence.VIOLATES, "it states a dosage")
    if terms.diagnosis and asserted(DIAGNOSIS, text):
        return Finding(Evidence.VIOLATES, "it tells the user what condition they have")
    if terms.medication and (asserted(MEDICATION_CHANGE, text) or asserted(MEDICATION_ADVICE, text)):
        return Finding(Evidence.VIOLATES, "it tells the user to take, stop or change a medicine")
    if terms.pii and personal_data(text, terms.pii):
        return Finding(Evidence.VIOLATES, "it contains personal data of a kind the policy names")
    if terms.profanity:
        for match in PROFANITY.finditer(MARKDOWN_EMPHASIS.sub(r"\1", text)):
            if match.group(0).lower() not in terms.allowed_words:
                return Finding(Evidence.VIOLATES, "it uses profanity or an insult")
    if terms.insults and DIRECTED_INSULT.search(text):
        return Finding(Evidence.VIOLATES, "it insults the user")
    if terms.swearing_only:
        return Finding(Evidence.COMPLIES, "it uses none of the words the policy forbids")
    if terms.required_languages or terms.forbidden_languages:
        languages = [code for code in text_languages(text) if code is not None]
        if any(code in terms.forbidden_languages for code in languages) or (
            terms.required_languages and any(code not in terms.required_languages for code in languages)
        ):
            return Finding(Evidence.VIOLATES, "it is written in a language the policy rules out")
        if terms.language_only and languages:
            return Finding(Evidence.COMPLIES, "every sentence is in a language the policy allows")
    return None


def redacted(policy: str, terms: PolicyTerms) -> str:
    """The policy with the secret values it states blanked out, for a reason shown to the user."""
    for value in terms.secrets:
        policy = policy.replace(value, "[redacted]")
    return policy


def masked_own_brand(terms: PolicyTerms, text: str) -> str:
    """The text with the policy's own brand replaced by "our company": naming ourselves is no violation,
    but the classifier reads any brand under a competitor policy as one."""
    for brand in terms.own:
        if brand in terms.forbidden:
            continue
        text = re.sub(TERM_BOUNDARY.format(re.escape(brand)) + r"(?:['’]s)?", "our company", text)
    return text
