"""``torchrun --nproc-per-node 2`` HeadIG (gloo, CPU) equals the one-process scores exactly.

Every rank attributes every second example and the per-example attributions are gathered in
example order before the mean, so the result is bit-identical (no float tolerance needed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaptive_dllm.importance import HeadImportance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from test_importance_cli import TEXT, byte_checkpoint  # noqa: E402


@pytest.mark.slow
def test_two_ranks_give_the_one_process_scores(tmp_path, torchrun_env):
    ckpt = byte_checkpoint(tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    args = ["importance", "estimate", "--method", "headig", "--model", str(ckpt), "--data",
            str(text), "--text-length", "32", "--text-limit", "96", "--steps", "2", "--path-samples", "2",
            "--mask-ratios", "0.5", "--mask-samples", "1", "--device", "cpu", "--seed", "3"]
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    single = subprocess.run([sys.executable, "-m", "adaptive_dllm.cli", *args, "--out", str(one)],
                            env=torchrun_env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "adaptive_dllm.cli", "-v", *args,
                           "--out", str(two), "--resume", str(tmp_path / "partial.pt")],
                          env=torchrun_env, capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stderr
    assert "rank 1 of 2 joined (gloo)" in dist.stderr
    assert dist.stdout.count("wrote ") == 1  # rank 0 alone reports
    a, b = HeadImportance.load(one), HeadImportance.load(two)
    assert torch.equal(a.scores, b.scores)
    assert a.metadata["completeness"] == b.metadata["completeness"]
    assert a.metadata["data"] == b.metadata["data"]
    # every rank kept its own resume file with its share of the examples (2 + 1)
    parts = [torch.load(tmp_path / f"partial.pt.rank{r}of2", weights_only=True) for r in (0, 1)]
    assert [len(p["ig"]) for p in parts] == [2, 1]
