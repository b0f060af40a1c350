"""The builtin checker's training data is apart from the evaluation sets: no text is shared."""

from __future__ import annotations

from pathlib import Path

from server.guardrails.training import DATA_PATH, load_cases

ROOT = Path(__file__).resolve().parents[2]
EVAL_SETS = [ROOT / "tests" / "data" / "guardrails_eval.jsonl", ROOT / "tests" / "data" / "guardrails_test.jsonl"]


def test_no_training_text_appears_in_the_evaluation_sets() -> None:
    evaluated = {case.text for path in EVAL_SETS for case in load_cases(path)}
    trained = {case.text for case in load_cases(DATA_PATH)}
    assert len(trained) > 1000 and len(evaluated) > 450
    assert not evaluated & trained
