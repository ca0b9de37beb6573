"""Fixtures shared by the evaluation tests."""

from __future__ import annotations

import pytest
import torch

import adaptive_dllm as ad


@pytest.fixture(scope="module")
def bundled():
    """The bundled model on CPU in float32, loaded once per test module."""
    # One thread: these tiny forwards are slower with two threads on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ad.load(device="cpu", dtype="float32")
    torch.set_num_threads(threads)
