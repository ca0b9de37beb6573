"""Sparse-attention command-line flags -> SparseConfig (for adllm generate / eval / bench)."""

from __future__ import annotations

import argparse

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.sparsity.cli_args import (
    add_sparse_arguments,
    sparse_config_from_args,
    summary_stats,
)


def _parse(argv):
    p = argparse.ArgumentParser()
    add_sparse_arguments(p)
    return sparse_config_from_args(p.parse_args(argv))


def test_dense_without_flags():
    assert _parse([]) is None


def test_uniform_flags():
    cfg = _parse(["--sparse", "uniform", "--select", "0.4", "--skip", "0.1", "--block-size", "64",
                  "--region", "joint", "--gqa-unit", "query", "--sparse-backend", "reference",
                  "--build-kernel", "separate"])
    assert (cfg.select, cfg.skip, cfg.block_size, cfg.region, cfg.gqa, cfg.backend,
            cfg.build_kernel) == (0.4, 0.1, 64, "joint", "query", "reference", "separate")
    assert cfg.importance is None


def test_adaptive_loads_importance(tmp_path):
    path = HeadImportance(scores=torch.rand(2, 4), head_kind="query", metadata={}).save(
        tmp_path / "imp.safetensors")
    cfg = _parse(["--sparse", "adaptive", "--importance", str(path)])
    assert cfg.mode == "adaptive" and cfg.importance.scores.shape == (2, 4)


@pytest.mark.parametrize("argv,needle", [
    (["--select", "0.3"], "--select"),
    (["--build-kernel", "fused"], "--build-kernel"),
    (["--sparse", "adaptive"], "--importance"),
    (["--sparse", "uniform", "--importance", "x"], "adaptive"),
    (["--sparse", "uniform", "--select", "0"], "select"),
    (["--sparse", "uniform", "--skip", "1"], "skip"),
])
def test_bad_flags_one_line(argv, needle):
    with pytest.raises(AdllmError) as err:
        _parse(argv)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_block_size_choices_enforced_by_argparse():
    with pytest.raises(SystemExit):
        _parse(["--sparse", "uniform", "--block-size", "48"])


def test_summary_stats():
    dense = summary_stats(None, 64)
    assert dense["dense_steps"] == 64 and dense["realized_keep_ratio"] is None
    assert dense["backend"] == "dense"
    st = {"backend": "flex", "backend_reason": "r", "dense_steps": 13, "sparse_steps": 51,
          "target_keep_ratio": 0.3, "realized_keep_ratio": 0.31, "extra": 1}
    assert summary_stats(st, 64) == {k: v for k, v in st.items() if k != "extra"}
