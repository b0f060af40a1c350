"""Cores for several engines on one CPU box (pure functions; the sysfs reader on a fake tree)."""

from __future__ import annotations

from pathlib import Path

from server.config import load_settings
from server.engine.placement import physical_cpus, spread_bindings, sysfs_core, with_cpu_bindings


def test_one_logical_cpu_per_physical_core() -> None:
    siblings = {0: ("0", "0"), 1: ("0", "1"), 2: ("0", "0"), 3: ("0", "1"), 4: ("1", "0")}
    assert physical_cpus([3, 2, 1, 0, 4], siblings.__getitem__) == [0, 1, 4]


def test_sysfs_core_reads_package_and_core_and_tolerates_a_missing_tree(tmp_path: Path) -> None:
    topology = tmp_path / "cpu3" / "topology"
    topology.mkdir(parents=True)
    (topology / "physical_package_id").write_text("1\n")
    (topology / "core_id").write_text("7\n")
    assert sysfs_core(3, tmp_path) == ("1", "7")
    assert sysfs_core(4, tmp_path) == ("", "cpu4")


def test_engines_get_cores_of_their_own_and_the_last_stays_for_the_front_end() -> None:
    assert spread_bindings(2, list(range(16))) == ["0,1,2,3,4,5,6", "7,8,9,10,11,12,13"]
    assert spread_bindings(3, [0, 1, 2, 3]) == ["0", "1", "2"]
    assert spread_bindings(2, [0, 1]) == ["0", "1"]  # as many cores as engines: the front end shares the last
    assert spread_bindings(3, [0, 1]) == ["0", "1", "0"]
    assert spread_bindings(0, [0, 1]) == [] and spread_bindings(2, []) == []


def test_only_unset_single_rank_entries_are_spread_and_only_when_several() -> None:
    served = load_settings(environ={}).served
    first = served.model_copy(update={"name": "first"})
    second = served.model_copy(update={"name": "second"})
    pinned = served.model_copy(update={"name": "pinned", "cpu_threads_bind": "5"})
    ranks = served.model_copy(update={"name": "ranks", "tensor_parallel_size": 2})
    assert with_cpu_bindings([first], [0, 1]) == [first]  # one engine: vLLM's auto binding
    assert with_cpu_bindings([first, pinned, ranks], [0, 1]) == [first, pinned, ranks]
    spread = with_cpu_bindings([first, pinned, second, ranks], [0, 1, 2])
    assert [entry.cpu_threads_bind for entry in spread] == ["0", "5", "1", None]
    assert first.cpu_threads_bind is None  # the configured entries are left as they are
