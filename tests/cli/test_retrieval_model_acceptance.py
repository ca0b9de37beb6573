"""Issue #13 acceptance on CPU: the bundled retrieval model answers 2,048-byte retrieval items.

Runs ``adllm eval task retrieval --model retrieval --length 2048 --limit 16 --json --modes dense``
in process, pinned to CPU and float32 (the defaults on a machine without a GPU, so the number is
the one CI sees on any machine), and requires dense accuracy >= 0.9 in the JSON report.
"""

from __future__ import annotations

import json

import pytest

from adaptive_dllm.cli import main

COMMAND = ["eval", "task", "retrieval", "--model", "retrieval", "--length", "2048", "--limit", "16",
           "--json", "--modes", "dense"]


@pytest.mark.slow
def test_retrieval_model_scores_at_least_0_9_dense_at_2048(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # "retrieval" must name the bundled model, not a local directory
    code = main([*COMMAND, "--device", "cpu", "--dtype", "float32"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert data["task"] == "retrieval"
    assert data["model"] == "bundled:retrieval"  # the same on every installation
    (dense,) = data["results"]
    assert (dense["mode"], dense["select"], dense["n"]) == ("dense", 1.0, 16)
    assert dense["accuracy"] >= 0.9, dense
