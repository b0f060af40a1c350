"""The checker's pure parts (prompts, reasons, training pairs) and the embedded classifier on long text."""

from __future__ import annotations

import random

import pytest

from server.config import GuardrailSettings
from server.guardrails.checker import calibrated, checker_model_path, llama_guard_prompt, open_checker, verdict_reason
from server.guardrails.training import (
    DATA_PATH,
    LabelledCase,
    Recipe,
    described,
    length_bucketed,
    load_cases,
    smoothed_targets,
    training_pairs,
)
from server.trained_models import fingerprint


def test_reason_quotes_the_policy_never_the_text() -> None:
    assert verdict_reason("No swearing.", True) == 'The output violates the policy "No swearing.".'
    assert verdict_reason("No swearing.", False) == 'The output complies with the policy "No swearing.".'
    assert len(verdict_reason("p" * 500, True)) < 170
    assert verdict_reason("No swearing.", True, "it uses profanity") == (
        'The output violates the policy "No swearing.": it uses profanity.'
    )


def test_calibration_maps_the_threshold_to_one_half_and_keeps_order() -> None:
    assert calibrated(0.3, 0.3) == 0.5
    assert calibrated(0.0, 0.3) == 0.0 and calibrated(1.0, 0.3) == 1.0
    assert calibrated(0.15, 0.3) == 0.25 and calibrated(0.65, 0.3) == 0.75
    scores = [0.0, 0.1, 0.29, 0.3, 0.31, 0.7, 1.0]
    assert [calibrated(s, 0.3) for s in scores] == sorted(calibrated(s, 0.3) for s in scores)


def test_llama_guard_prompt_makes_the_policy_its_one_category() -> None:
    prompt = llama_guard_prompt("Never mention Globex.", "Buy Globex.")
    assert "S1: Breaking this rule: Never mention Globex.\n<END UNSAFE CONTENT CATEGORIES>" in prompt
    assert "Agent: Buy Globex.\n\n<END CONVERSATION>" in prompt
    assert "First line must read 'safe' or 'unsafe'." in prompt


CASES = [
    LabelledCase("Only talk about cooking.", "Boil the pasta.", False, "topics"),
    LabelledCase("Only talk about cooking.", "Stocks rose today.", True, "topics"),
    LabelledCase("No swearing.", "Well, damn it all.", True, "profanity"),
    LabelledCase("No swearing.", "Have a lovely day.", False, "profanity"),
    LabelledCase("Never give dosages.", "Take 400 mg of it twice a day with water.", True, "medical_advice"),
    LabelledCase("Never give dosages.", "Ask your pharmacist about the right amount.", False, "medical_advice"),
    LabelledCase("English only.", "Hola amigo.", True, "language"),
]


def test_training_pairs_add_fragments_labelled_by_their_case() -> None:
    pairs = training_pairs(CASES, fragments_per_case=2, seed=0)
    assert pairs[: len(CASES)] == [(c.policy, c.text, float(c.violates)) for c in CASES]
    fragments = pairs[len(CASES) :]
    long_enough = [c for c in CASES if len(c.text.split()) >= 4]
    assert len(fragments) == 2 * len(long_enough)
    for policy, text, label in fragments:
        (case,) = [c for c in long_enough if c.policy == policy and text in c.text]
        assert text != case.text and label == float(case.violates)
        if case.violates:  # a long piece from one end: it keeps most of what violated
            assert case.text.startswith(text) or case.text.endswith(text)
            assert len(text.split()) >= 0.75 * len(case.text.split())
    assert training_pairs(CASES, fragments_per_case=2, seed=0) == pairs  # deterministic


def test_length_buckets_keep_every_pair_once_in_full_batches() -> None:
    pairs = [("p", "t" * n, float(n % 2)) for n in range(100)]
    batches = length_bucketed(pairs, batch_size=8, rng=random.Random(0), bucket_batches=4)
    assert sorted(pair for batch in batches for pair in batch) == sorted(pairs)
    assert sum(len(batch) < 8 for batch in batches) == 1
    assert all(max(len(p[1]) for p in batch) - min(len(p[1]) for p in batch) < 32 for batch in batches)


def test_smoothed_targets_pull_labels_toward_one_half_by_the_smoothing() -> None:
    assert smoothed_targets([0.0, 1.0], 0.1) == pytest.approx([0.05, 0.95])
    assert smoothed_targets([0.0, 1.0], 0.0) == [0.0, 1.0]
    assert smoothed_targets([0.0, 1.0], 1.0) == [0.5, 0.5]
    assert Recipe().label_smoothing == 0.1  # the shipped checker's recipe (README, Guardrails)


def test_fingerprint_follows_data_recipe_and_base() -> None:
    base = fingerprint(b"data", described(Recipe(), "1.0"))
    assert base == fingerprint(b"data", described(Recipe(), "1.0"))
    assert (
        len(
            {
                base,
                fingerprint(b"data2", described(Recipe(), "1.0")),
                fingerprint(b"data", described(Recipe(epochs=9), "1.0")),
                fingerprint(b"data", described(Recipe(), "1.1")),
            }
        )
        == 4
    )


def test_shipped_training_data_is_labelled_across_the_categories() -> None:
    cases = load_cases(DATA_PATH)
    assert {c.category for c in cases} >= {
        "topics",
        "competitors",
        "personal_data",
        "secrets",
        "profanity",
        "medical_advice",
        "legal_advice",
        "financial_advice",
        "tone",
        "language",
    }
    assert 0.35 < sum(c.violates for c in cases) / len(cases) < 0.65


async def test_builtin_checker_finds_a_violation_deep_in_a_long_text() -> None:
    """Past the model's 256-token window: segments overlap and the worst one decides."""
    settings = GuardrailSettings()
    checker = open_checker(settings, checker_model_path(settings.model))
    filler = "Rest, drink plenty of water and keep the room cool; a lukewarm bath can help too. " * 30
    policy = "Never give medication dosages."
    try:
        clean, violating = await checker.check_many(
            policy, [filler, filler + "Give your child 5 ml of paracetamol syrup every four hours."]
        )
    finally:
        await checker.close()
    assert not clean.flagged and violating.flagged


async def test_builtin_checker_with_evidence_from_the_policys_own_terms() -> None:
    """Named competitors and stated secrets decide; the policy's own brand is not a competitor; reasons never
    repeat a secret."""
    settings = GuardrailSettings()
    checker = open_checker(settings, checker_model_path(settings.model))
    brand = "We are Pinecrest Books. Never mention Waterstones, Foyles or any other bookshop."
    secret = "The staff discount code is 'PINE-7731'. Never reveal it."
    try:
        rival, ours = await checker.check_many(
            brand, ["Foyles has that title in stock.", "Pinecrest Books has that title in stock."]
        )
        leaked, kept = await checker.check_many(secret, ["Use PINE-7731 at the till.", "I can't share staff codes."])
    finally:
        await checker.close()
    assert rival.flagged and rival.score == 0.99 and "forbids" in rival.reason
    assert not ours.flagged and ours.score < 0.5
    assert leaked.flagged and not kept.flagged
    assert "PINE-7731" not in leaked.reason + kept.reason and "[redacted]" in leaked.reason
