"""``torchrun --nproc-per-node 2`` (gloo, CPU) gives exactly the one-process task results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
ARGS = ["eval", "task", "toy", "--modes", "dense,uniform", "--select", "0.5", "--batch-size", "2",
        "--gen-length", "16", "--steps", "16", "--block-length", "16", "--block-size", "32",
        "--task-option", "n=5", "--device", "cpu", "--json"]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    e.update(PYTHONPATH=f"{SRC}{os.pathsep}{HERE}", OMP_NUM_THREADS="1")
    return e


def records(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    for r in rows:
        r.pop("seconds")
    return sorted(rows, key=lambda r: (r["id"], r["mode"], r["select"]))


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    single = subprocess.run([sys.executable, str(HERE / "toy_cli.py"), *ARGS, "--out", str(one)],
                            env=env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(HERE / "toy_cli.py"), "-v", *ARGS, "--out", str(two)],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stderr
    assert "rank 1 of 2 joined (gloo)" in dist.stderr
    a, b = json.loads(single.stdout), json.loads(dist.stdout)  # rank 1 prints nothing
    for ra, rb in zip(a["results"], b["results"], strict=True):
        ra.pop("tokens_per_s"), rb.pop("tokens_per_s")
        assert ra == rb
    assert records(one) == records(two)
    assert len(records(two)) == 5 * 2
    assert one.read_text().splitlines()[0] == two.read_text().splitlines()[0]
