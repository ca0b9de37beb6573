"""One CLI vocabulary: every command spells a concept one way (the shared option groups of
``cli/arguments.py``), and old spellings only survive hidden from ``--help``."""

from __future__ import annotations

import argparse
from collections import defaultdict

import pytest

from adaptive_dllm.cli import build_parser

#: Old spellings: parsed where cheap, never shown.
OLD_SPELLINGS = ("--gqa-unit", "--max-new-tokens")


def _parsers(parser: argparse.ArgumentParser, name: str = "adllm"
             ) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out.extend(_parsers(sub, f"{name} {sub_name}"))
    return out


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def _visible(action: argparse.Action) -> bool:
    return action.help != argparse.SUPPRESS


@pytest.fixture(scope="module")
def commands():
    return _parsers(build_parser())


def _spelling(action: argparse.Action) -> tuple[str, ...]:
    """The flags of an option; ``--no-X`` of a boolean ``--X`` is the same word."""
    return tuple(sorted(f for f in action.option_strings if not f.startswith("--no-")))


def test_a_flag_means_one_option_everywhere(commands):
    dests = defaultdict(set)
    for _name, parser in commands:
        for action in _options(parser):
            for flag in action.option_strings:
                dests[flag].add(action.dest)
    assert {f: d for f, d in dests.items() if len(d) > 1} == {}


def test_an_option_is_spelled_one_way_everywhere(commands):
    spellings = defaultdict(set)
    for _name, parser in commands:
        for action in _options(parser):
            if _visible(action):
                spellings[action.dest].add(_spelling(action))
    assert {d: s for d, s in spellings.items() if len(s) > 1} == {}


def test_old_spellings_are_hidden(commands):
    for name, parser in commands:
        shown = [f for a in _options(parser) if _visible(a) for f in a.option_strings]
        assert not set(OLD_SPELLINGS) & set(shown), name
        assert not any(o in parser.format_help() for o in OLD_SPELLINGS), name


def test_gqa_is_kv_or_query_everywhere(commands):
    seen = []
    for name, parser in commands:
        for action in _options(parser):
            if "--gqa" in action.option_strings:
                seen.append(name)
                assert tuple(action.choices) == ("kv", "query"), name
                assert action.type("q") == "query"  # the old budget spelling still parses
    assert {"adllm generate", "adllm budget"} <= set(seen)


def test_commands_use_the_shared_groups(commands):
    """The commands of issue #11 take their model, sampler and sparse options from the shared
    groups: same flags, same help text as the group's own."""
    reference = argparse.ArgumentParser()
    from adaptive_dllm.cli.arguments import add_model_args, add_sampler_args, add_sparse_args

    add_model_args(reference)
    add_sampler_args(reference)
    add_sparse_args(reference)
    helps = {a.dest: a.help.split(" (default")[0] for a in _options(reference) if _visible(a)}
    by_name = dict(commands)
    expected = {
        "adllm generate": {"model", "device", "steps", "gen_length", "temperature", "sparse",
                           "select", "gqa", "sparse_backend"},
        "adllm eval fidelity": {"model", "device", "steps", "gen_length", "block_length",
                                "block_size", "skip", "region", "importance"},
        "adllm eval nll": {"model", "device", "dtype"},
        "adllm eval task": {"model", "device", "steps", "gen_length", "block_length",
                            "temperature", "remasking", "cfg_scale", "alg", "alg_temp", "eps",
                            "top_p", "top_k", "skip", "block_size", "sparse_backend", "region",
                            "min_keep_ratio", "refresh", "importance"},
        "adllm budget": {"gqa", "min_keep_ratio"},
        "adllm prune": {"model", "device", "download"},
        "adllm bench": {"device", "steps", "gen_length", "block_length", "threshold", "select",
                        "skip", "block_size"},
        "adllm importance estimate": {"model", "device", "download"},
    }
    for name, dests in expected.items():
        found = {a.dest: a.help for a in _options(by_name[name]) if _visible(a)}
        for dest in dests:
            assert dest in found, (name, dest)
            assert found[dest].split(" (default")[0] == helps[dest], (name, dest)


def test_quiet_is_spelled_q_and_quiet(commands):
    for name, parser in commands:
        for action in _options(parser):
            if action.dest == "quiet":
                assert sorted(action.option_strings) == ["--quiet", "-q"], name
