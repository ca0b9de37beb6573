"""List options (`add_list`): space- or comma-separated values; retired option names."""

from __future__ import annotations

import argparse

import pytest

from adaptive_dllm.cli import build_parser
from adaptive_dllm.cli.arguments import positive_int
from adaptive_dllm.cli.lists import add_list


def _parser():
    p = argparse.ArgumentParser(prog="t")
    add_list(p, "--lengths", convert=positive_int, default=[1, 2])
    add_list(p, "--family", choices=("llada", "dream"), default=["llada"])
    return p


@pytest.mark.parametrize("argv", [["--lengths", "4096", "16384"], ["--lengths", "4096,16384"],
                                  ["--lengths", "4096,", "16384"]])
def test_space_and_comma_separated_values_give_one_list(argv):
    assert _parser().parse_args(argv).lengths == [4096, 16384]


def test_defaults_are_kept_when_the_option_is_absent():
    args = _parser().parse_args([])
    assert (args.lengths, args.family) == ([1, 2], ["llada"])


@pytest.mark.parametrize("argv, needle", [
    (["--family", "llada,gpt"], "invalid choice 'gpt' (choose from llada, dream)"),
    (["--lengths", "4096,0"], "0 must be at least 1"),
    (["--lengths", ","], "holds no value"),
])
def test_bad_values_name_the_value(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2 and needle in capsys.readouterr().err


def test_bench_takes_comma_lists_like_eval():
    args = build_parser().parse_args(["bench", "--family", "llada,dream", "--lengths", "4096,8192",
                                      "--what", "kernel", "e2e", "--n-layers", "2"])
    assert (args.family, args.lengths, args.what, args.n_layers) == (
        ["llada", "dream"], [4096, 8192], ["kernel", "e2e"], 2)


def test_bench_layers_is_renamed_with_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", "--layers", "4"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "use --n-layers 4" in err and "Traceback" not in err
