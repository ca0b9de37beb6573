"""The GPU probes of benchmarks/probes import against the current package and parse --help (they
construct backends with options objects; running them needs a GPU)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

PROBES = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "probes").glob("probe_*.py"))


def test_there_are_probes():
    assert len(PROBES) >= 5


@pytest.mark.parametrize("path", PROBES, ids=lambda p: p.stem)
def test_probe_imports_and_prints_help(path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(path), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "Needs a CUDA GPU" in " ".join(out.split())


def test_no_probe_mutates_module_globals():
    stale = ("USE_TMA =", "KERNEL_OPTIONS", "DEFAULT_METHOD", "COMPILE_LOG", "sparsity.fused_build",
             "sparsity.mass_kernel", "attention import block_sparse")
    for path in PROBES:
        text = path.read_text()
        assert not [s for s in stale if s in text], path.name
