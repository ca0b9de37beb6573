"""``adllm eval fidelity`` on 2 torchrun ranks (gloo, CPU) reports exactly the one-process rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from test_importance_cli import byte_checkpoint  # noqa: E402


@pytest.mark.slow
def test_two_ranks_report_the_one_process_rows(tmp_path, torchrun_env):
    ckpt = byte_checkpoint(tmp_path / "model")
    args = ["eval", "fidelity", "--model", str(ckpt), "--device", "cpu", "--length", "64",
            "--modes", "dense,uniform", "--select", "0.5,1", "--block-size", "32",
            "--mask-ratios", "0.5", "--passages", "2", "--prompts", "2", "--prompt-length", "32",
            "--gen-length", "16", "--block-length", "16", "--json"]
    single = subprocess.run([sys.executable, "-m", "adaptive_dllm.cli", *args], env=torchrun_env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "adaptive_dllm.cli", "-v", *args],
                          env=torchrun_env, capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stderr
    assert "rank 1 of 2 joined (gloo)" in dist.stderr
    a, b = json.loads(single.stdout), json.loads(dist.stdout)  # rank 1 prints nothing
    assert [(r["mode"], r["select"]) for r in b["rows"]] == [("dense", 1.0), ("uniform", 0.5),
                                                              ("uniform", 1.0)]
    assert a["rows"] == b["rows"]
    assert a["settings"] == b["settings"] and a["passages"] == b["passages"]
