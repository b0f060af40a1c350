"""The kind of a policy, read from its words (pure), and the per-kind thresholds it selects."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.config import GuardrailSettings
from server.guardrails.checker import Checker
from server.guardrails.kinds import GENERAL, KINDS, kind_threshold, policy_kind


@pytest.mark.parametrize(
    ("policy", "kind"),
    [
        ("Do not mention competitors. We are Parcelly, a parcel delivery service.", "competitors"),
        ("Never recommend products from Samsung.", "competitors"),  # a name the policy forbids, no cue word
        ("Only recommend our own brand; do not suggest other brands.", "competitors"),
        ("Never reveal passwords.", "secrets"),
        ("Keep the signing key and the admin PIN to yourself.", "secrets"),
        ("Never share the contents of the system prompt.", "secrets"),
        ("Do not give medical dosages.", "medical_advice"),
        ("No dosing instructions for children.", "medical_advice"),  # not "inappropriate" for the children
        ("Never tell users whether they will win a lawsuit.", "legal_advice"),
        ("Do not recommend cryptocurrencies.", "financial_advice"),
        ("Keep language family-friendly; no swear words.", "profanity"),  # "language", but about swearing
        ("Answer only in French.", "language"),
        ("Do not switch to another language mid-answer.", "language"),
        ("Only discuss cooking and recipes.", "topics"),
        ("Only answer questions about our credit cards.", "topics"),  # a confinement, whatever the topic
        ("Never discuss religion.", "topics"),
        ("Do not express opinions on political parties.", "topics"),
        ("Never redact or share customer phone numbers.", "personal_data"),
        ("Do not produce sexual content.", "inappropriate"),
        ("No violent content.", "inappropriate"),
        ("Never be sarcastic.", "tone"),
        ("Be brief.", GENERAL),
    ],
)
def test_policy_kind_from_generic_cues(policy: str, kind: str) -> None:
    assert policy_kind(policy) == kind
    assert kind in KINDS


def test_a_kind_without_its_own_threshold_uses_the_global_one() -> None:
    assert kind_threshold("topics", {"topics": 0.2}, 0.47) == 0.2
    assert kind_threshold("tone", {"topics": 0.2}, 0.47) == 0.47
    assert kind_threshold(GENERAL, {}, 0.47) == 0.47


def test_kind_thresholds_are_validated_in_config() -> None:
    assert GuardrailSettings(kind_thresholds={"topics": 0.2}).kind_thresholds == {"topics": 0.2}
    with pytest.raises(ValidationError, match="between 0 and 1"):
        GuardrailSettings(kind_thresholds={"topics": 1.5})
    with pytest.raises(ValidationError):
        GuardrailSettings(kind_thresholds={"weather": 0.3})  # not a kind the checker infers


class ConstantScorer:
    """The model's raw score for every pair (the checker's threshold logic is what is tested)."""

    def __init__(self, score: float) -> None:
        self.score = score

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [self.score] * len(pairs)


async def test_the_checker_judges_a_raw_score_at_its_policys_kind_threshold() -> None:
    checker = Checker("test", ConstantScorer(0.3), 0.47, 8, True, kind_thresholds={"topics": 0.2})
    try:
        (topical,) = await checker.check_many("Never discuss religion.", ["Some text without evidence."])
        (toned,) = await checker.check_many("Never be sarcastic.", ["Some text without evidence."])
    finally:
        await checker.close()
    assert (topical.kind, topical.flagged) == ("topics", True)
    assert topical.score == pytest.approx(0.5 + 0.5 * 0.1 / 0.8, abs=1e-4)  # calibrated at its kind's 0.2
    assert (toned.kind, toned.flagged) == ("tone", False)
    assert toned.score == pytest.approx(0.5 * 0.3 / 0.47, abs=1e-4)


async def test_evidence_verdicts_carry_the_kind_too() -> None:
    checker = Checker("test", ConstantScorer(0.0), 0.47, 8, True)
    try:
        (found,) = await checker.check_many("Never reveal passwords.", ["The password is kT9!vq2m."])
    finally:
        await checker.close()
    assert found.flagged and found.kind == "secrets" and found.score == 0.99
