"""`run --profile`: the reports name where the time and the memory went."""

from __future__ import annotations

import pytest

from stream.observe.profiling import run_profiled


def busy_work() -> None:
    sum(i * i for i in range(200_000))


def hold_memory() -> None:
    global KEPT
    KEPT = [bytearray(1024) for _ in range(2000)]  # ~2 MB alive at exit


def test_cpu_report_names_the_hot_function(tmp_path):
    out = run_profiled("cpu", busy_work, tmp_path / "cpu.txt")
    text = out.read_text()
    assert "busy_work" in text and "by own time" in text
    assert (tmp_path / "cpu.pstats").exists()


def test_memory_report_names_the_allocation_site(tmp_path):
    out = run_profiled("memory", hold_memory, tmp_path / "mem.txt")
    text = out.read_text()
    assert text.startswith("peak traced memory")
    assert "test_profiling.py" in text.splitlines()[2]  # the biggest live site is ours


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError):
        run_profiled("gpu", busy_work, tmp_path / "x.txt")
