"""The shared sparse-attention flags -> SparseConfig (adllm generate / eval / bench)."""

from __future__ import annotations

import argparse

import pytest
import torch

from adaptive_dllm.cli.arguments import add_sparse_args, sparse_config_from_args
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.artifact import HeadImportance


def _parse(argv):
    p = argparse.ArgumentParser()
    add_sparse_args(p)
    return sparse_config_from_args(p.parse_args(argv))


def test_dense_without_flags():
    assert _parse([]) is None


def test_uniform_flags():
    cfg = _parse(["--sparse", "uniform", "--select", "0.4", "--skip", "0.1", "--block-size", "64",
                  "--region", "joint", "--gqa", "query", "--sparse-backend", "reference",
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


def test_reference_only_block_size_is_a_one_line_error_elsewhere():
    assert _parse(["--sparse", "uniform", "--block-size", "8", "--sparse-backend",
                   "reference"]).block_size == 8
    with pytest.raises(AdllmError, match="block_size=8 is not supported by the 'auto' backend"):
        _parse(["--sparse", "uniform", "--block-size", "8"])


@pytest.mark.parametrize("old, new", [(["--gqa-unit", "query"], ["--gqa", "query"]),
                                      (["--gqa", "q"], ["--gqa", "query"])])
def test_old_gqa_spellings_parse_as_the_new_one(old, new):
    base = ["--sparse", "uniform"]
    assert _parse(base + old) == _parse(base + new)
    assert _parse(base + new).gqa == "query"


def test_a_command_picks_options_and_defaults():
    p = argparse.ArgumentParser()
    add_sparse_args(p, only=("block_size", "skip", "sparse_backend"), defaults={"skip": 0.5},
                    backends=("reference", "flex"))
    args = p.parse_args([])
    assert (args.block_size, args.skip, args.sparse_backend) == (None, 0.5, None)
    assert not hasattr(args, "select")
    with pytest.raises(SystemExit):
        p.parse_args(["--sparse-backend", "triton"])
    assert "(default: 0.5)" in p.format_help() and "(default 128)" in p.format_help()
    with pytest.raises(ValueError, match="no 'sparse attention' option"):
        add_sparse_args(argparse.ArgumentParser(), only=("gqa_unit",))
