"""``adllm bench`` harness: CPU smoke run of the tiny geometry, JSON records, plot, errors."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.bench.e2e import ideal_e2e as _ideal_e2e
from adaptive_dllm.bench.reports import plot, summarize, table
from adaptive_dllm.cli import main


def test_tiny_kernel_sweep_json_and_plot(tmp_path, capsys):
    png = tmp_path / "speedup.png"
    out = tmp_path / "records.jsonl"
    rc = main(["bench", "--tiny", "--device", "cpu", "--what", "kernel", "--family", "llada",
               "--lengths", "64", "--repeats", "1", "--json", "--plot", str(png),
               "--out", str(out)])
    assert rc == 0
    # --json is one strict JSON document (found by an audit: it printed one record per line)
    records = json.loads(capsys.readouterr().out)["records"]
    modes = {r["mode"] for r in records}
    assert modes == {"flex_all_blocks", "uniform", "adaptive"}
    for r in records:
        assert r["kind"] == "kernel" and r["env"]["torch"] == torch.__version__
        assert r["env"]["command"].startswith("adllm bench --what kernel") and r["env"]["date"]
        assert r["dense_backend"] in r["dense_backends_ms"]
    assert len(out.read_text().splitlines()) == len(records)
    assert png.stat().st_size > 1000
    assert "uniform" in table(records) and summarize(records)


def test_tiny_e2e_records(tmp_path):
    from adaptive_dllm.bench.sweep import SweepSettings, run_sweep

    s = SweepSettings(families=("dream",), e2e_lengths=(40,), n_layers=1, steps=4, gen_length=8,
                      modes=("uniform",), tiny=True, device="cpu", dtype="float32")
    records = run_sweep(s, what=("e2e",))
    kinds = [(r["kind"], r.get("mode"), r.get("run")) for r in records]
    assert kinds == [("compile", None, None), ("e2e", "dense", None),
                     ("e2e", "uniform", "cold"), ("e2e", "uniform", "warm")]
    warm = records[-1]
    assert warm["sparse_stats"]["backend"] == "flex" and warm["new_graphs"] == 0
    plot(records, str(tmp_path / "e2e.png"))


def test_ideal_bound():
    # all attention, keep 0.5, every step sparse: 2x; no attention: 1x
    assert _ideal_e2e(1.0, 1.0, 0.5, 0, 10) == pytest.approx(2.0)
    assert _ideal_e2e(1.0, 0.0, 0.3, 2, 8) == pytest.approx(1.0)


def test_full_size_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "GPU" in err


@pytest.mark.parametrize("flag, value", [("--select", "5"), ("--skip", "1.5"), ("--select", "0")])
def test_invalid_sparse_settings_fail_before_the_sweep(capsys, flag, value):
    code = main(["bench", "--tiny", "--device", "cpu", "--lengths", "256", flag, value, "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""  # nothing ran
    assert len(captured.err.strip().splitlines()) == 1


def test_a_passed_deadline_skips_with_a_reason(capsys):
    """Found by an audit: the skip record's reason formatted a None estimate and the sweep
    recorded a TypeError instead of the skip."""
    import time

    from adaptive_dllm.bench.sweep import SweepSettings, run_sweep

    s = SweepSettings(families=("llada",), e2e_lengths=(40,), n_layers=1, steps=4, gen_length=8,
                      modes=("uniform",), tiny=True, device="cpu", dtype="float32",
                      deadline=time.monotonic() - 1)
    records = run_sweep(s, what=("e2e",))
    assert [r["kind"] for r in records if r["kind"] != "compile"] == ["skipped"]
    assert records[-1]["reason"] == "deadline" and "error" not in records[-1]


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_deadline_must_be_a_finite_positive_time(capsys, value):
    code = main(["bench", "--tiny", "--device", "cpu", "--deadline", value, "--json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "--deadline" in captured.err
