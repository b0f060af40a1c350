"""The checker's pure parts (prompts, reasons, training pairs) and the embedded classifier on long text."""

from __future__ import annotations

import random

from server.config import GuardrailSettings
from server.guardrails.checker import checker_model_path, llama_guard_prompt, open_checker, verdict_reason
from server.guardrails.training import (
    ALLOWLIST_CATEGORIES,
    DATA_PATH,
    LabelledCase,
    Recipe,
    fingerprint,
    length_bucketed,
    load_cases,
    training_pairs,
)


def test_reason_quotes_the_policy_never_the_text() -> None:
    assert verdict_reason("No swearing.", True) == 'The output violates the policy "No swearing.".'
    assert verdict_reason("No swearing.", False) == 'The output complies with the policy "No swearing.".'
    assert len(verdict_reason("p" * 500, True)) < 170


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
    LabelledCase("Never give dosages.", "Take 400 mg twice a day.", True, "medical_advice"),
    LabelledCase("Never give dosages.", "Ask your pharmacist.", False, "medical_advice"),
    LabelledCase("English only.", "Hola amigo.", True, "language"),
]


def test_training_pairs_add_clean_cross_policy_pairs_and_windows() -> None:
    pairs = training_pairs(CASES, seed=0)
    assert pairs[: len(CASES)] == [(c.policy, c.text, float(c.violates)) for c in CASES]
    policies = {c.policy: c.category for c in CASES}
    texts = {c.text: c for c in CASES}
    cross = [p for p in pairs[len(CASES) :] if p[1] in texts and policies[p[0]] != texts[p[1]].category]
    assert len(cross) == len(CASES) - 1  # every case but the non-English one
    assert all(label == 0.0 and policies[policy] not in ALLOWLIST_CATEGORIES for policy, _, label in cross)
    windows = [p for p in pairs if p[1] not in texts]
    assert windows
    for policy, text, label in windows:
        parts = [c for c in CASES if c.policy == policy and c.text in text]
        assert label == float(any(c.violates for c in parts))
    assert training_pairs(CASES, seed=0) == pairs  # deterministic


def test_length_buckets_keep_every_pair_once_in_full_batches() -> None:
    pairs = [("p", "t" * n, float(n % 2)) for n in range(100)]
    batches = length_bucketed(pairs, batch_size=8, rng=random.Random(0), bucket_batches=4)
    assert sorted(pair for batch in batches for pair in batch) == sorted(pairs)
    assert sum(len(batch) < 8 for batch in batches) == 1
    assert all(max(len(p[1]) for p in batch) - min(len(p[1]) for p in batch) < 32 for batch in batches)


def test_fingerprint_follows_data_recipe_and_base() -> None:
    base = fingerprint(b"data", Recipe(), "1.0")
    assert base == fingerprint(b"data", Recipe(), "1.0")
    assert (
        len(
            {
                base,
                fingerprint(b"data2", Recipe(), "1.0"),
                fingerprint(b"data", Recipe(epochs=9), "1.0"),
                fingerprint(b"data", Recipe(), "1.1"),
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
    filler = "Our blender has a glass jar, five speeds and a two-year warranty. " * 40
    policy = "Never mention or recommend competitor products. Our competitors are Globex and Initech."
    try:
        clean, violating = await checker.check_many(
            policy, [filler, filler + "For a cheaper option, buy the Globex HomeBlend 300 instead."]
        )
    finally:
        await checker.close()
    assert not clean.flagged and violating.flagged
