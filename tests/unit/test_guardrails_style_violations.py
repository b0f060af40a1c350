"""Violations in the served model's voice (`scripts/add_guard_style_violations.py`): what each row holds, and that
it shares no text or policy with the evaluation sets (measured, not applied yet: see README, issue 15)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

from server.guardrails.training import DATA_PATH, VIOLATING_FRAGMENT_SHARE, load_cases

ROOT = Path(__file__).resolve().parents[2]
EVAL_SETS = [ROOT / "tests" / "data" / name for name in ("guardrails_eval.jsonl", "guardrails_test.jsonl")]


def script(name: str = "add_guard_style_violations") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_cuts_fragments_as_training_does() -> None:
    assert script().FRAGMENT_SHARE == VIOLATING_FRAGMENT_SHARE


def test_a_violation_kept_by_every_training_fragment() -> None:
    keeps = script().keeps_violation
    assert keeps(20, 10, 20)  # mid-text: any 3/4 of the words from either end holds it
    assert not keeps(40, 10, 0)  # at the very end: a fragment from the start loses it
    assert not keeps(0, 10, 40)  # at the very start: a fragment from the end loses it
    assert keeps(12, 12, 6)  # near the end: a fragment loses a third of it at most


def test_a_window_holds_the_violation_with_words_either_side() -> None:
    module = script()
    before = [f"b{i}" for i in range(40)]
    violation = ["take", "two", "500", "mg", "tablets", "every", "four", "hours"]
    after = [f"a{i}" for i in range(30)]
    for seed in range(20):
        piece = module.window(before, violation, after, random.Random(seed)).split()
        start = piece.index("take")
        assert piece[start : start + len(violation)] == violation
        assert start >= 4 and len(piece) - start - len(violation) >= 4  # it starts and ends mid-text
        assert module.keeps_violation(start, len(violation), len(piece) - start - len(violation))
    assert module.window([], violation, after, random.Random(0)) is None  # a window starts mid-text
    assert module.window(before, violation, [], random.Random(0)) is None


def test_a_text_needs_exactly_one_marked_violation() -> None:
    module = script()
    assert module.split_marked("Sure! [[Buy Tesla.]] I hope this helps!") == (
        "Sure! ",
        "Buy Tesla.",
        " I hope this helps!",
    )
    for bad in ("no marks at all", "[[one]] and [[two]]"):
        try:
            module.split_marked(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_every_kind_has_violations_and_clean_contrasts_in_the_training_data() -> None:
    module = script()
    kinds = module.load_kinds()
    rows = module.style_violation_rows(kinds)
    assert rows == module.style_violation_rows(kinds)  # deterministic
    evaluated = [case for path in EVAL_SETS for case in load_cases(path)]  # not applied yet: kept apart from them
    assert not {row["text"] for row in rows} & {case.text for case in evaluated}
    assert not {row["policy"] for row in rows} & {case.policy for case in evaluated}
    violations: dict[str, list[str]] = {}
    for key, spec in kinds.items():
        marked = [module.split_marked(entry["text"])[1] for entry in spec["texts"]]
        assert len(marked) >= 4
        violations.setdefault(spec.get("category", key), []).extend(marked)
    for kind, marked in violations.items():
        kind_rows = [row for row in rows if row["category"] == kind]
        assert sum(row["violates"] for row in kind_rows) >= 2 * len(marked)
        for row in kind_rows:
            holds = [" ".join(v.split()[:4]) in " ".join(row["text"].split()) for v in marked]
            assert any(holds) if row["violates"] else not any(holds)  # a clean row is its answer without it


def test_pieces_of_the_answers_are_recognised_and_other_texts_are_not() -> None:
    module = script()
    answers = module.answers_flat(module.load_kinds())
    piece = " ".join(answers[0].split()[5:25])
    assert module.from_these_answers(piece, answers)
    assert not module.from_these_answers("Sure!", answers)  # too short to tell whose it is
    assert not module.from_these_answers("Tomatoes need at least six hours of direct sun every day.", answers)


def test_model_dev_violating_answers_are_never_trained_on() -> None:
    held_out = script("add_guard_hard_negatives").violating_answers()
    assert len(held_out) >= 3
    assert not held_out & {case.text for case in load_cases(DATA_PATH)}
