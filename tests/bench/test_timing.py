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
    """A call that spends 0.5 ms on the host (less than the ~1 ms the GPU is kept busy) and
    almost nothing on the GPU: one call's latency sees the host time, gpu_time does not.
    (Written in a session whose device time was spent: not yet run on a GPU.)"""
    import time

    x = torch.ones(1024, device="cuda")

    def host_heavy():
        time.sleep(0.0005)
        x.add_(1)

    assert time_fn(host_heavy, repeats=5)["median_ms"] > 0.45
    assert time_fn(host_heavy, repeats=5, gpu_time=True)["median_ms"] < 0.2


def test_gpu_time_is_ignored_on_the_cpu():
    calls = []
    out = time_fn(lambda: calls.append(1), warmup=1, repeats=3, gpu_time=True)
    assert len(calls) == 4 and len(out["samples_ms"]) == 3
