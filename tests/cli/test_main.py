"""The dispatcher: every command is registered and has examples in its help."""

import pytest

from adaptive_dllm.cli import COMMANDS, build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_examples(name):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "example" in (sub.choices[name].epilog or "").lower()


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
