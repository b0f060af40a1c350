"""The builtin checker's training data is apart from the evaluation sets: no text is shared."""

from __future__ import annotations

import json
from pathlib import Path

from server.guardrails.training import DATA_PATH, load_cases

ROOT = Path(__file__).resolve().parents[2]
EVAL_SETS = [ROOT / "tests" / "data" / "guardrails_eval.jsonl", ROOT / "tests" / "data" / "guardrails_test.jsonl"]


def test_no_training_text_appears_in_the_evaluation_sets() -> None:
    evaluated = {case.text for path in EVAL_SETS for case in load_cases(path)}
    trained = {case.text for case in load_cases(DATA_PATH)}
    assert len(trained) > 1000 and len(evaluated) > 450
    assert not evaluated & trained


MODEL_OUTPUTS = {
    "dev": ROOT / "scripts" / "data" / "guardrails_model_outputs_dev.jsonl",
    "test": ROOT / "tests" / "data" / "guardrails_model_outputs_test.jsonl",
}


def model_output_rows(split: str) -> list[dict]:
    return [json.loads(line) for line in MODEL_OUTPUTS[split].read_text().splitlines() if line.strip()]


def test_the_model_output_sets_are_apart_by_business_policy_and_text() -> None:
    """The test part comes from other businesses and policy wordings than the dev part, and nothing of it is
    trained on; the dev part may be (its whole answers are hard negatives in the training data)."""
    dev, test = model_output_rows("dev"), model_output_rows("test")
    assert len(dev) > 200 and len(test) > 200
    business = {
        split: {row["source"].rsplit("-", 2)[0] for row in rows} for split, rows in (("dev", dev), ("test", test))
    }
    assert len(business["dev"]) >= 5 and len(business["test"]) >= 5 and not business["dev"] & business["test"]
    assert not {row["policy"] for row in dev} & {row["policy"] for row in test}
    trained = {case.text for case in load_cases(DATA_PATH)}
    assert not {row["text"] for row in test} & trained
    trained_policies = {case.policy for case in load_cases(DATA_PATH)}
    assert not {row["policy"] for row in test} & trained_policies


def test_model_output_prefixes_are_stream_prefixes_of_their_answers() -> None:
    for split in MODEL_OUTPUTS:
        rows = model_output_rows(split)
        answers = {(row["source"], row["policy_id"]): row for row in rows if row["form"] == "answer"}
        assert answers and all(row["form"] in {"answer", "prefix"} for row in rows)
        for row in rows:
            whole = answers[(row["source"], row["policy_id"])]
            assert row["text"] == "".join(row["chunks"]).strip()
            if row["form"] == "prefix":
                assert whole["chunks"][: len(row["chunks"])] == row["chunks"]
                assert len(row["chunks"]) < len(whole["chunks"])
                assert not row["violates"] or whole["violates"]  # a violating prefix makes a violating answer
