"""Benchmark records name the code they timed."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.bench.timing import environment, time_fn


def test_records_carry_the_checkout_commit_or_the_override(monkeypatch):
    monkeypatch.delenv("ADLLM_GIT_COMMIT", raising=False)
    commit = environment()["git_commit"]
    assert commit is None or (len(commit) >= 7 and commit.isalnum())
    # A device's copy of the tree can carry older git metadata than its files: the override wins.
    monkeypatch.setenv("ADLLM_GIT_COMMIT", "abc1234")
    assert environment()["git_commit"] == "abc1234"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_time_leaves_out_the_host_launch_path():
    """A call that spends 0.3 ms on the host (well under the ~1 ms the GPU is kept busy) and
    almost nothing on the GPU: one call's latency sees the host time, gpu_time does not.
    (Written in a session whose device time was spent: not yet run on a GPU.)"""
    import time

    x = torch.ones(1024, device="cuda")

    def host_heavy():
        time.sleep(0.0003)
        x.add_(1)

    assert time_fn(host_heavy, repeats=5, device="cuda")["median_ms"] > 0.25
    assert time_fn(host_heavy, repeats=5, gpu_time=True, device="cuda")["median_ms"] < 0.15


def test_cpu_work_is_timed_on_the_host_clock_even_on_a_gpu_machine():
    """device="cpu": the host clock, and gpu_time has nothing to overlap (a GPU machine once
    timed CPU work with CUDA events, and gpu_time would have hidden it behind the busy wait)."""
    import time

    calls = []

    def work():
        calls.append(1)
        time.sleep(0.002)

    out = time_fn(work, warmup=1, repeats=3, gpu_time=True, device="cpu")
    assert len(calls) == 4 and len(out["samples_ms"]) == 3 and out["min_ms"] >= 1.9
