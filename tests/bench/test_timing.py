"""Benchmark records name the code they timed."""

from __future__ import annotations

from adaptive_dllm.bench.timing import environment


def test_records_carry_the_checkout_commit_or_the_override(monkeypatch):
    monkeypatch.delenv("ADLLM_GIT_COMMIT", raising=False)
    commit = environment()["git_commit"]
    assert commit is None or (len(commit) >= 7 and commit.isalnum())
    # A device's copy of the tree can carry older git metadata than its files: the override wins.
    monkeypatch.setenv("ADLLM_GIT_COMMIT", "abc1234")
    assert environment()["git_commit"] == "abc1234"
