"""The SparseD schedule: dense steps, build step, sparse steps (exact rounding documented)."""

from __future__ import annotations

import pytest

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.sparsity.schedule import Schedule, dense_step_count


@pytest.mark.parametrize("steps,skip,dense", [
    (128, 0.2, 26),  # upstream: int(128 * 0.2) + 2 = 27
    (256, 0.2, 52),
    (10, 0.2, 2),  # 0.2 * 10 is 2.0000000000000004 in floating point: still 2
    (10, 0.7, 7),
    (128, 0.0, 1),  # one dense step to measure the scores from
    (5, 0.99, 5),
    (1, 0.5, 1),
])
def test_dense_step_count(steps, skip, dense):
    assert dense_step_count(steps, skip) == dense


def test_kinds():
    s = Schedule(10, 0.2)
    assert [s.kind(i) for i in range(10)] == ["dense", "build"] + ["sparse"] * 8
    assert (s.dense_steps, s.sparse_steps, s.build_step) == (2, 8, 1)
    all_dense = Schedule(4, 0.9)
    assert [all_dense.kind(i) for i in range(4)] == ["dense"] * 4
    assert all_dense.build_step is None


def test_bad_steps():
    with pytest.raises(AdllmError):
        dense_step_count(0, 0.2)


def test_refresh_steps_rebuild_only_in_the_sparse_phase():
    s = Schedule(16, 0.25, refresh_steps=(2, 8, 12))
    kinds = [s.kind(i) for i in range(16)]
    assert kinds[:4] == ["dense", "dense", "dense", "build"]  # step 2 is still dense
    assert kinds[8] == kinds[12] == "build"
    assert kinds.count("sparse") == 16 - 4 - 2
