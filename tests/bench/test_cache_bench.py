"""``adllm bench`` cache protocol (issue 14) and cached-step kernel records: CPU smoke runs of the
tiny geometry, what the records carry, and option errors. GPU timings skip without CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.bench.reports import summarize, table
from adaptive_dllm.bench.settings import SweepSettings
from adaptive_dllm.cli import main
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.support import BLOCK_SIZES

TINY = ["bench", "--tiny", "--device", "cpu", "--family", "llada", "--n-layers", "1",
        "--gen-length", "16", "--block-length", "8", "--block-size", "16", "--repeats", "1",
        "--quiet", "--json"]


@pytest.fixture(scope="module")
def cache_records():
    """One smoke run: no cache / prefix, fixed 2 tokens per step, reference and auto backends,
    and the cached-step kernel at 256 keys."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([*TINY, "--what", "e2e", "decode", "--e2e-lengths", "64", "--lengths", "256",
                   "--cache", "none", "prefix", "--tokens-per-step", "2", "--modes", "uniform",
                   "--sparse-backend", "reference", "auto"])
    assert rc == 0
    return json.loads(buf.getvalue())["records"]


def test_cache_records_say_what_ran(cache_records):
    e2e = [r for r in cache_records if r["kind"] == "e2e"]
    assert [(r["cache"], r["mode"], r["sparse_backend"]) for r in e2e] == [
        (None, "dense", None), ("prefix", "dense", None), ("prefix", "uniform", "reference"),
        ("prefix", "uniform", "auto")]
    for r in e2e:
        # fixed-count decoding: exactly 2 tokens per forward, reported as such
        assert r["decoding"] == "fixed" and r["tokens_per_step"] == 2
        assert r["forwards"] == 8 and r["tokens_per_forward"] == 2.0
        assert "random weights" in r["decoding_note"]
        assert r["command"].startswith("adllm bench ") and "--tokens-per-step 2" in r["command"]
        assert r["env"]["torch"] == torch.__version__ and "git_commit" in r["env"]
        assert r["device"].startswith("cpu")
    base, prefix_dense, ref, auto = e2e
    assert base["refreshes"] == 8 and prefix_dense["refreshes"] == 2  # one per block of 8
    assert "speedup_over_no_cache_dense" not in base
    assert ref["speedup"] == ref["speedup_over_no_cache_dense"]
    assert ref["speedup_over_same_cache_dense"] == pytest.approx(
        prefix_dense["total_s"] / ref["total_s"])
    assert ref["sparse_stats"]["cached_backend"] == "reference"
    assert ref["sparse_stats"]["cached_sparse_steps"] > 0
    # the samplers' default; on the CPU nothing is replayed
    assert all(r["cuda_graphs"] is True and r["graph_replays"] == 0 for r in e2e)
    # auto on the CPU: dense everywhere, and the stats say why
    assert auto["sparse_stats"]["backend"] == "dense"
    assert auto["sparse_stats"]["cached_backend"] == "dense"
    assert auto["sparse_stats"]["cached_sparse_steps"] == 0


def test_decode_records_compare_with_dense_sdpa(cache_records):
    (dec,) = [r for r in cache_records if r["kind"] == "decode"]
    assert dec["keys"] == 256 and dec["queries"] == 32 and dec["kernel"] == "reference"
    assert dec["keep_ratio"] == pytest.approx(5 / 16)  # round(0.3 * 16) blocks of 16 keys
    assert dec["dense_backend"] in dec["dense_backends_ms"]
    assert dec["speedup"] == pytest.approx(dec["dense_ms"] / dec["ms"])
    assert dec["bytes_read"] < dec["dense_bytes_read"] and dec["copy_rate_gbs"] > 0
    assert dec["gbs"] == pytest.approx(dec["bytes_read"] / dec["ms"] / 1e6)
    # GPU time (launches overlapped) beside one isolated call's latency
    assert dec["timing"] == "wall" and dec["call_ms"] > 0 and dec["dense_call_ms"] > 0  # CPU
    assert dec["call_speedup"] == pytest.approx(dec["dense_call_ms"] / dec["call_ms"])
    text = table(cache_records)
    assert "cache protocol" in text and "cached step" in text and "one call" in text
    assert "e2e/llada/uniform +prefix [reference]" in summarize(cache_records)


def test_cache_plot_draws_the_kernel_and_end_to_end_panels(cache_records, tmp_path):
    pytest.importorskip("matplotlib")
    from adaptive_dllm.bench.reports import plot_cache

    path = tmp_path / "cache.png"
    plot_cache(cache_records, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threshold_runs_are_labelled_threshold():
    from adaptive_dllm.bench.sweep import run_sweep

    s = SweepSettings(families=("dream",), e2e_lengths=(24,), n_layers=1, gen_length=8,
                      llada_block_length=4, caches=("dual",), threshold=0.9, modes=(),
                      tiny=True, device="cpu", dtype="float32")
    (rec,) = run_sweep(s, what=("e2e",))
    assert rec["decoding"] == "threshold" and rec["tokens_per_step"] is None
    assert rec["threshold"] == 0.9 and rec["cache"] == "dual"
    assert rec["forwards"] * rec["tokens_per_forward"] == pytest.approx(8)


@pytest.mark.parametrize("argv, says", [
    (["--tokens-per-step", "3", "--cache", "prefix"], "tokens_per_step=3"),
    (["--tokens-per-step", "2", "--threshold", "0.9"], "exclude each other"),
    (["--threshold", "0"], "threshold"),
    (["--block-size", "8"], "take 16, 32, 64, 128"),
    (["--block-size", "512"], "take 16, 32, 64, 128"),
])
def test_bad_cache_options_are_one_line_errors(capsys, argv, says):
    assert main([*TINY, "--what", "e2e", "--e2e-lengths", "64", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and says in captured.err
    assert len([ln for ln in captured.err.splitlines() if "error" in ln]) == 1


def test_block_sizes_are_the_kernels_list(capsys):
    """--block-size is the shared option (its choices include the reference backend's sizes);
    bench refuses every size the kernels lack before any work and names the kernels' list."""
    from adaptive_dllm.attention.reference import REFERENCE_BLOCK_SIZES

    assert set(BLOCK_SIZES) < set(REFERENCE_BLOCK_SIZES)
    for size in sorted(set(REFERENCE_BLOCK_SIZES) - set(BLOCK_SIZES)):
        assert main([*TINY, "--what", "kernel", "--lengths", "64", "--block-size", str(size)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and ", ".join(map(str, BLOCK_SIZES)) in captured.err


def test_settings_validate_the_cache_sweep():
    with pytest.raises(AdllmError, match="cache 'full'"):
        SweepSettings(caches=("full",))
    with pytest.raises(AdllmError, match="exclude each other"):
        SweepSettings(tokens_per_step=2, threshold=0.9)
    for bad in (0, True, 1.5):
        with pytest.raises(AdllmError, match="e2e_repeats="):
            SweepSettings(e2e_repeats=bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton cached-step kernel needs CUDA")
def test_decode_records_time_the_triton_kernel_on_a_gpu():
    from adaptive_dllm.bench.cache import copy_rate_gbs, decode_records

    s = SweepSettings(lengths=(8192,), repeats=3, device="cuda", dtype="bfloat16")
    (rec,) = decode_records("dream", 8192, s, copy_gbs=copy_rate_gbs("cuda", mib=256))
    assert rec["kernel"] == "triton" and rec["ms"] > 0 and rec["gbs_over_copy"] > 0


def test_no_cuda_graphs_reaches_the_records(capsys):
    code = main([*TINY, "--what", "e2e", "--e2e-lengths", "64", "--cache", "prefix",
                 "--tokens-per-step", "2", "--modes", "uniform", "--sparse-backend", "reference",
                 "--no-cuda-graphs"])
    assert code == 0
    records = [r for r in json.loads(capsys.readouterr().out)["records"] if r["kind"] == "e2e"]
    assert records and all(r["cuda_graphs"] is False for r in records)
    assert "--no-cuda-graphs" in records[0]["command"]


def test_e2e_repeats_keep_the_median_run_and_every_total(capsys):
    code = main([*TINY, "--what", "e2e", "--e2e-lengths", "64", "--cache", "prefix",
                 "--tokens-per-step", "2", "--modes", "uniform", "--sparse-backend", "reference",
                 "--e2e-repeats", "3"])
    assert code == 0
    records = [r for r in json.loads(capsys.readouterr().out)["records"] if r["kind"] == "e2e"]
    assert len(records) == 2  # prefix dense, prefix uniform: one record each, not three
    for r in records:
        samples = r["total_s_samples"]
        assert len(samples) == 3 and r["total_s"] == sorted(samples)[1]
        assert "--e2e-repeats 3" in r["command"]


def test_median_run_is_one_whole_run():
    from adaptive_dllm.bench.cache import _median_run

    runs = [{"total_s": t, "forwards": f, "peak_memory_gb": p}
            for t, f, p in ((3.0, 30, 1.0), (1.0, 10, 2.0), (2.0, 20, 1.5), (4.0, 40, 0.5))]
    pick = _median_run(runs)
    assert (pick["total_s"], pick["forwards"]) == (2.0, 20)  # lower middle of four, its own fields
    assert pick["peak_memory_gb"] == 2.0  # the largest peak of all runs


def test_e2e_repeats_outside_the_cache_protocol_are_refused(capsys):
    code = main([*TINY, "--what", "e2e", "--e2e-lengths", "64", "--e2e-repeats", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "--e2e-repeats 3" in err and err.count("\n") == 1
