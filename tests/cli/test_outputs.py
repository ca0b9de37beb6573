"""What the commands write and print: atomic reports, bench's JSONL appends, progress lines,
familiar option names (--max-new-tokens, --version), bytes as prompts, and the same defaults
as the Python API."""

from __future__ import annotations

import io
import json
import os
import stat

import pytest
import torch

from adaptive_dllm.cli import main

KERNEL_BENCH = ["bench", "--tiny", "--device", "cpu", "--what", "kernel", "--family", "llada",
                "--lengths", "256", "--repeats", "1", "--modes", "uniform"]
LLADA_IDS = "31 64 68 121 45 116 53 56"


def test_bench_out_appends_to_its_own_records_with_umask_permissions(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    old = os.umask(0o027)
    try:
        assert main([*KERNEL_BENCH, "--out", str(out), "--quiet"]) == 0
    finally:
        os.umask(old)
    first = out.read_text().splitlines()
    assert first and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert main([*KERNEL_BENCH, "--out", str(out), "--quiet"]) == 0  # appends to its own file
    lines = out.read_text().splitlines()
    assert lines[: len(first)] == first and len(lines) == 2 * len(first)
    assert all(json.loads(line)["kind"] == "kernel" for line in lines)
    assert capsys.readouterr().err == ""  # --quiet: no progress lines


def test_bench_prints_a_line_per_measurement_and_writes_a_plot(tmp_path, capsys):
    plot = tmp_path / "speed.svg"
    assert main([*KERNEL_BENCH, "--plot", str(plot)]) == 0
    err = capsys.readouterr().err
    assert "done: kernel llada 256" in err
    assert plot.read_text().lstrip().startswith("<?xml")
    assert [p.name for p in tmp_path.iterdir()] == ["speed.svg"]  # no temporary left behind


def test_prune_report_is_written_strict_and_whole(tmp_path, capsys):
    from adaptive_dllm.importance.artifact import HeadImportance
    from adaptive_dllm.models.checkpoints import read_config

    config, _ = read_config()
    imp = tmp_path / "v.safetensors"
    HeadImportance(torch.rand(config.n_layers, config.n_heads), "query",
                   {"estimator": "random"}).save(imp)
    report = tmp_path / "report.json"
    report.write_text("old")
    code = main(["prune", "--importance", str(imp), "--which", "random", "--seeds", "1",
                 "--length", "64", "--max-passages", "1", "--mask-ratios", "0.5",
                 "--out", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert data["summary"]["nll_mean"]["random_std"] is None
    assert "(1 seed)" in out
    assert "prune: 2/2 run (100%)" in err  # progress lines when stderr is not a terminal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "v.safetensors"]


def test_eval_nll_progress_lines_and_quiet(capsys):
    argv = ["eval", "nll", "--length", "64", "--max-passages", "4", "--batch-size", "1",
            "--mask-ratios", "0.5"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "masked NLL: 4/4 passage (100%)" in err and "\r" not in err
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_version(capsys):
    from adaptive_dllm import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("adllm ") and out.split()[1][0].isdigit()
    assert out == f"adllm {__version__}"  # the source tree and pyproject agree


def test_max_new_tokens_is_gen_length(fixtures_dir, capsys):
    base = ["generate", LLADA_IDS, "--ids", "--model", str(fixtures_dir / "llada_tiny"),
            "--steps", "8", "--json"]
    assert main([*base, "--gen-length", "8"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main([*base, "--max-new-tokens", "8"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a["ids"] == b["ids"] and b["stats"]["gen_length"] == 8


@pytest.mark.parametrize("name, extra", [("llada_tiny", []), ("dream_tiny", [])])
def test_cli_and_api_share_defaults(fixtures_dir, fixture_model, capsys, name, extra):
    """Only --gen-length given: every other default (block length, steps, ...) must be the
    API's. 64 tokens: the CLI once used 32-token blocks where the API uses one block."""
    import adaptive_dllm as ad

    ids = [int(t) for t in LLADA_IDS.split()]
    api = ad.generate(fixture_model(name), None, ids, gen_length=64)
    assert main(["generate", LLADA_IDS, "--ids", "--model", str(fixtures_dir / name),
                 "--gen-length", "64", "--device", "cpu", "--json", *extra]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["ids"] == api.ids[0].tolist()
    assert cli["stats"]["steps"] == api.stats["steps"]


def test_cli_passes_no_option_the_user_did_not_give(monkeypatch, capsys, scripted):
    import adaptive_dllm.generation.api as api
    from adaptive_dllm.errors import AdllmError
    from adaptive_dllm.models.tokenizer import ByteTokenizer

    seen = {}

    def spy(model, tok, prompt, **kwargs):
        seen.update(kwargs)
        raise AdllmError("stopped after the call was seen")

    monkeypatch.setattr(api, "generate", spy)
    monkeypatch.setattr("adaptive_dllm.models.checkpoints.load",
                        lambda *a, **k: (scripted(2, 8), ByteTokenizer()))
    assert main(["generate", "ab", "--json"]) == 2
    assert "stopped after the call was seen" in capsys.readouterr().err
    sampler_options = set(seen) - {"chat", "seed", "sparse", "on_step"}
    assert sampler_options == set()  # block length, steps, gen length: the API's defaults


def test_any_bytes_reach_the_byte_model(monkeypatch, capsys, scripted):
    from adaptive_dllm.models.tokenizer import ByteTokenizer

    raw = b"caf\xc3\xa9 \xff\xfe!"
    monkeypatch.setattr("adaptive_dllm.models.checkpoints.load",
                        lambda *a, **k: (scripted(len(raw), 8), ByteTokenizer()))
    argv_prompt = raw.decode("utf-8", errors="surrogateescape")  # what Python puts in argv
    assert main(["generate", argv_prompt, "--gen-length", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["prompt_length"] == len(raw)

    class Stdin:
        buffer = io.BytesIO(raw)

    monkeypatch.setattr("sys.stdin", Stdin())
    assert main(["generate", "-", "--gen-length", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["prompt_length"] == len(raw)
