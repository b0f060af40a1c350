"""Models the server trains for itself are built once per fingerprint, and never picked up half-written."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from server.trained_models import build_once, fingerprint, train_once, warmup_then_decay

MARKER = "spec.json"


def test_fingerprint_follows_the_data_and_the_description() -> None:
    base = fingerprint(b"data", {"recipe": {"epochs": 3}, "base": "m==1"})
    assert base == fingerprint(b"data", {"base": "m==1", "recipe": {"epochs": 3}})  # key order is not a change
    others = {
        fingerprint(b"data2", {"recipe": {"epochs": 3}, "base": "m==1"}),
        fingerprint(b"data", {"recipe": {"epochs": 4}, "base": "m==1"}),
        fingerprint(b"data", {"recipe": {"epochs": 3}, "base": "m==2"}),
    }
    assert len(others | {base}) == 4 and all(len(value) == 12 for value in others)


def test_a_model_is_built_once_in_a_private_folder_then_moved_into_place(tmp_path: Path) -> None:
    target = tmp_path / "model-abc"
    seen: list[tuple[Path, bool]] = []

    def build(folder: Path, progress) -> None:
        seen.append((folder, target.exists()))
        folder.mkdir()
        (folder / "weights").write_text("w")
        progress(1, 2)
        progress(2, 2)
        (folder / MARKER).write_text("{}")

    assert build_once(target, MARKER, "test", build, show_progress=False) == target
    assert (target / "weights").read_text() == "w"
    [(folder, existed)] = seen
    assert folder != target and not existed and not folder.exists()
    assert build_once(target, MARKER, "test", build, show_progress=False) == target
    assert len(seen) == 1  # the second call found it built


def test_a_build_that_another_process_finished_first_is_dropped(tmp_path: Path) -> None:
    target = tmp_path / "model-abc"

    def build(folder: Path, progress) -> None:
        folder.mkdir()
        (folder / MARKER).write_text("mine")
        (target / MARKER).parent.mkdir()
        (target / MARKER).write_text("theirs")  # the other process renamed its build into place meanwhile
        (target / "more").write_text("x")

    assert build_once(target, MARKER, "test", build, show_progress=False) == target
    assert (target / MARKER).read_text() == "theirs"
    assert [path.name for path in tmp_path.iterdir()] == ["model-abc"]


def test_train_once_names_the_folder_by_fingerprint_and_makes_examples_only_to_train(tmp_path: Path) -> None:
    made: list[int] = []

    def examples() -> list[int]:
        made.append(1)
        return [1, 2, 3]

    def train(items: list[int], folder: Path, progress) -> None:
        folder.mkdir()
        (folder / MARKER).write_text(str(sum(items)))

    first = train_once(tmp_path / "model", b"data", {"epochs": 1}, MARKER, "a test model", examples, train, False)
    again = train_once(tmp_path / "model", b"data", {"epochs": 1}, MARKER, "a test model", examples, train, False)
    assert first == again == tmp_path / f"model-{fingerprint(b'data', {'epochs': 1})}"
    assert (first / MARKER).read_text() == "6" and len(made) == 1
    other = train_once(tmp_path / "model", b"data", {"epochs": 2}, MARKER, "a test model", examples, train, False)
    assert other != first and len(made) == 2


def test_the_learning_rate_warms_up_then_decays_to_zero() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = warmup_then_decay(optimizer, steps=20, warmup_fraction=0.1)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.5 and rates[1] == 1.0  # 2 warm-up steps
    assert all(later <= earlier for earlier, later in itertools.pairwise(rates[1:]))
    assert optimizer.param_groups[0]["lr"] == 0.0
