"""Which CPU cores each served model's engine runs on when several share one CPU box.

vLLM's CPU backend binds an engine's OpenMP threads to every physical core but the ones it keeps for the front
end, so two engines started by one server land on the same cores and each runs at about 0.4x its speed alone
(README, several models). Given cores of their own they run at about 0.9x each.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from server.config import ModelEntry

SYSFS_CPUS = Path("/sys/devices/system/cpu")


def physical_cpus(cpus: Sequence[int], core_of: Callable[[int], tuple[str, str]]) -> list[int]:
    """One logical CPU per physical core (the lowest numbered), as vLLM's auto binding uses them on x86."""
    seen: set[tuple[str, str]] = set()
    chosen = []
    for cpu in sorted(cpus):
        core = core_of(cpu)
        if core not in seen:
            seen.add(core)
            chosen.append(cpu)
    return chosen


def sysfs_core(cpu: int, root: Path = SYSFS_CPUS) -> tuple[str, str]:
    """(package, core) of a logical CPU; a CPU whose topology cannot be read counts as a core of its own."""
    topology = root / f"cpu{cpu}" / "topology"
    try:
        return (topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()
    except OSError:
        return "", f"cpu{cpu}"


def spread_bindings(engines: int, cpus: Sequence[int]) -> list[str]:
    """`VLLM_CPU_OMP_THREADS_BIND` values giving each of `engines` engines cores of its own out of `cpus`.

    The last core stays for this process (HTTP, tokenization, embedder, checker) when there are more cores than
    engines; with as many or fewer, engines take one core each, round robin, the last one shared with the front end.
    """
    if engines < 1 or not cpus:
        return []
    usable = list(cpus[:-1]) if len(cpus) > engines else list(cpus)
    if len(usable) < engines:
        return [str(usable[index % len(usable)]) for index in range(engines)]
    share = len(usable) // engines
    return [",".join(str(cpu) for cpu in usable[index * share : (index + 1) * share]) for index in range(engines)]


def with_cpu_bindings(entries: Sequence[ModelEntry], cpus: Sequence[int]) -> list[ModelEntry]:
    """`entries`, where two or more leave `cpu_threads_bind` unset, with those spread over `cpus` (physical, in
    order). An entry that sets it, or runs tensor-parallel ranks (one list per rank), keeps vLLM's own choice."""
    spread = [
        index
        for index, entry in enumerate(entries)
        if entry.cpu_threads_bind is None and entry.tensor_parallel_size == 1
    ]
    if len(spread) < 2:
        return list(entries)
    bindings = dict(zip(spread, spread_bindings(len(spread), cpus), strict=True))
    return [
        entry.model_copy(update={"cpu_threads_bind": bindings[index]}) if index in bindings else entry
        for index, entry in enumerate(entries)
    ]


def this_process_cpus() -> list[int]:
    """The physical cores this process may run on (its affinity, one logical CPU per core)."""
    return physical_cpus(sorted(os.sched_getaffinity(0)), sysfs_core)
