"""The README's first commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert first_block, "README must open with a code block holding the two commands"
    return [line for line in first_block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_install_and_test_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    run, test = commands
    assert "pip install" in run and "adllm generate" in run
    assert "pip install" in test and "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci.splitlines()
