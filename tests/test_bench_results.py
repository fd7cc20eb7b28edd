"""The benchmarks' collection of their measuring processes' results (:func:`bench.dataprep.
results_of`): every result is taken, and a process that dies without its result fails the
benchmark at once instead of leaving it waiting forever."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import pytest

from bench.dataprep import results_of


def _answer(out: Any, value: int) -> None:
    out.put(value)


def _die(out: Any) -> None:
    os._exit(3)  # as a crash does: nothing put


def test_each_process_result_is_taken() -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_answer, args=(out, i)) for i in range(3)]
    for p in procs:
        p.start()
    assert sorted(results_of(out, procs)) == [0, 1, 2]
    for p in procs:
        p.join()


def test_a_process_that_dies_without_its_result_fails_instead_of_hanging() -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_answer, args=(out, 7)), ctx.Process(target=_die, args=(out,))]
    for p in procs:
        p.start()
    with pytest.raises(RuntimeError, match=r"ended without its result \(exit codes .*3"):
        results_of(out, procs)
    for p in procs:
        p.join()
