"""Which dtype a CPU computes in: the served model and the query embedder (`auto`), adaption training, and the CPU
flags they read."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.adaption.worker import cpu_training_dtype
from server.config import MemorySettings
from server.cpu_features import cpu_dtype, cpu_flags


@pytest.mark.parametrize(
    ("setting", "flags", "expected"),
    [
        ("auto", {"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
        ("auto", {"avx512f", "amx_bf16", "amx_tile"}, "bfloat16"),
        ("auto", {"avx2", "avx512f", "avx512_vnni"}, "float32"),  # bfloat16 would be emulated: slower
        ("auto", set(), "float32"),
        ("float32", {"avx512_bf16"}, "float32"),
        ("bfloat16", set(), "bfloat16"),
    ],
)
def test_cpu_dtype(setting: str, flags: set[str], expected: str) -> None:
    assert cpu_dtype(setting, flags) == expected


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}


def test_cpu_flags_of_arm_and_of_no_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(cpuinfo) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_query_embedding_dtype_setting_is_checked() -> None:
    assert MemorySettings().query_embedding_dtype == "auto"
    assert MemorySettings(query_embedding_dtype="bfloat16").query_embedding_dtype == "bfloat16"
    with pytest.raises(ValueError, match="query_embedding_dtype"):
        MemorySettings(query_embedding_dtype="int8")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("served", "flags", "trained"),
    [
        ("bfloat16", {"avx2"}, "float32"),  # emulated bfloat16: many times slower than float32
        ("bfloat16", {"avx512f", "avx512_bf16"}, "bfloat16"),
        ("bfloat16", {"amx_bf16"}, "bfloat16"),
        ("float32", {"avx2"}, "float32"),
        ("float16", {"avx2"}, "float16"),
        ("auto", {"avx2"}, "float32"),  # as the engine serves it
        ("auto", {"avx512_bf16"}, "bfloat16"),
        (None, set(), None),
    ],
)
def test_adaption_trains_on_the_cpu_in_the_served_dtype_unless_bfloat16_is_emulated(
    served: str | None, flags: set[str], trained: str | None
) -> None:
    assert cpu_training_dtype(served, flags) == trained
