"""Shared helpers of the scripts/ tests: load a script as a module, and a fake Shakespeare corpus."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from adaptive_dllm.evaluation import data

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """``load_script("train_tiny")``: scripts/train_tiny.py as a module (main() not run)."""
    return _load


@pytest.fixture
def fake_corpus(tmp_path: Path) -> Path:
    """A corpus folder: every held-out work as numbered "held" lines (easy to spot if it leaks
    into training data) and two training works of repeated text."""
    directory = tmp_path / "corpus"
    directory.mkdir()
    for i, name in enumerate(data.HELDOUT_WORKS):
        (directory / f"{name}_gut.txt").write_bytes(b"".join(b"held %d %05d\n" % (i, j) for j in range(3000)))
    for name in ("hamlet", "lear"):
        (directory / f"{name}_gut.txt").write_bytes(b"To be, or not to be.\nThat is the question.\n" * 800)
    return directory
