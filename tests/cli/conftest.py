"""Fixtures shared by the ``adllm eval task`` CLI tests."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.cli import main


@pytest.fixture
def eval_task(capsys):
    """``eval_task(*argv)``: ``adllm eval task ARGV`` in-process -> (exit code, stdout, stderr),
    on one torch thread (these tiny forwards are slower with two on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["eval", "task", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    torch.set_num_threads(threads)
