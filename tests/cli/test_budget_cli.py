"""`adllm budget`: the report agrees with the allocator and bad input is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.budget import allocate, relative_weights, uniform_weights
from adaptive_dllm.cli import main
from adaptive_dllm.importance import HeadImportance

SELECTS = "0.05,0.1,0.2,0.3,0.5,0.8,0.9,0.95,1.0"


def _json(capsys, *argv: str) -> dict:
    assert main(["budget", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, *argv: str) -> str:
    assert main(["budget", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("adllm budget: error:")]
    assert len(errors) == 1, err
    return errors[0]


def _synthetic_weights(shape: str, kind: str, seed: int = 0) -> torch.Tensor:
    layers, heads, kv = {"llada-8b": (32, 32, 32), "dream-7b": (28, 28, 4)}[shape]
    if kind == "uniform":
        return uniform_weights(layers, kv)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, generator=gen, dtype=torch.float64).mul(0.6).exp()
    return relative_weights(scores, group_size=heads // kv)


@pytest.mark.parametrize("shape", ["llada-8b", "dream-7b"])
@pytest.mark.parametrize("kind", ["uniform", "lognormal"])
@pytest.mark.parametrize("n", [8, 32, 128, 512])
def test_json_matches_the_allocator(capsys, shape, kind, n):
    report = _json(capsys, "--shape", shape, "--synthetic", kind, "--seed", "0",
                   "--select", SELECTS, "--blocks", str(n))
    weights = _synthetic_weights(shape, kind)
    u = weights.numel()
    assert report["n_units"] == u and report["blocks_total"] == n
    assert [r["select"] for r in report["results"]] == [float(s) for s in SELECTS.split(",")]
    previous = None
    for r in report["results"]:
        blocks = torch.tensor(r["blocks"])
        assert blocks.shape == weights.shape and r["blocks_total"] == n
        expected = allocate(weights, r["select"], n)
        assert torch.equal(blocks, expected.blocks)
        # Any script can recompute the report from the allocation itself.
        target = round(r["select"] * u * n)
        assert r["target_total"] == target
        assert r["realised_total"] == int(blocks.sum())
        assert r["realised_mean"] == int(blocks.sum()) / (u * n)
        assert r["saturated"] == int((blocks == n).sum()) <= u
        assert r["floored"] == int(((blocks == r["k_min"]) & (blocks < n)).sum())
        assert r["keep_ratio_min"] == int(blocks.min()) / n
        assert r["keep_ratio_max"] == int(blocks.max()) / n
        if target >= u:
            assert r["realised_total"] == target and r["exact"] and not r["note"]
        else:
            assert bool((blocks == 1).all()) and "every unit keeps 1" in r["note"]
        if previous is not None:
            assert bool((blocks >= previous).all())
        previous = blocks


def test_text_report(capsys):
    assert main(["budget", "--shape", "dream-7b", "--synthetic", "lognormal", "--seed", "1",
                 "--select", "0.05,0.3,1.0", "--blocks", "8"]) == 0
    out = capsys.readouterr().out
    assert "28 layers x 4 KV-head units = 112" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()
             if line.strip() and line.split()[0] in ("0.05", "0.3", "1")}
    assert lines["1"][1] == lines["1"][2] == "896" and lines["1"][5] == "112/112"
    assert lines["0.3"][1] == lines["0.3"][2] == str(round(0.3 * 112 * 8))
    assert lines["0.05"][2] == "112" and lines["0.05"][6] == "112/112"  # all floored
    assert "select 0.05: target 45 blocks is below the minimum 112 units x 1" in out


def test_per_layer_table_and_json(capsys):
    assert main(["budget", "--shape", "4x8", "--synthetic", "lognormal", "--select", "0.3",
                 "--blocks", "16", "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "per layer, select 0.3:" in out and len([ln for ln in out.splitlines()
                                                    if ln.strip().startswith("3 ")]) == 1
    report = _json(capsys, "--shape", "4x8", "--synthetic", "lognormal", "--select", "0.3",
                   "--blocks", "16", "--per-layer")
    rows = report["results"][0]["per_layer"]
    assert len(rows) == 4 and sum(r["blocks"] for r in rows) == round(0.3 * 32 * 16)


def test_plot_writes_a_png(capsys, tmp_path):
    path = tmp_path / "keep.png"
    assert main(["budget", "--shape", "dream-7b", "--synthetic", "lognormal", "--select",
                 "0.2,0.9", "--blocks", "32", "--plot", str(path), "--json"]) == 0
    json.loads(capsys.readouterr().out)  # stdout stays pure JSON
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seq_len_and_block_size(capsys):
    report = _json(capsys, "--shape", "2x2", "--select", "0.5", "--seq-len", "1000",
                   "--block-size", "128")
    assert report["blocks_total"] == 8  # ceil(1000 / 128)


def test_importance_file_and_upstream_pt(capsys, tmp_path):
    scores = torch.randn(28, 28, generator=torch.Generator().manual_seed(0))
    path = HeadImportance(scores, "query", {"family": "dream", "n_kv_heads": 4}).save(
        tmp_path / "imp.safetensors")
    report = _json(capsys, "--importance", str(path), "--select", "0.3", "--blocks", "32")
    assert len(report["results"][0]["blocks"][0]) == 4  # KV heads from the metadata
    expected = allocate(relative_weights(scores.double(), group_size=7), 0.3, 32)
    assert torch.equal(torch.tensor(report["results"][0]["blocks"]), expected.blocks)
    upstream = tmp_path / "head_importance.pt"
    torch.save({"importance_scores": {i: -scores[i] for i in range(28)}}, upstream)
    negated = _json(capsys, "--importance", str(upstream), "--negate", "--shape", "dream-7b",
                    "--select", "0.3", "--blocks", "32")
    assert negated["results"][0]["blocks"] == report["results"][0]["blocks"]


def test_strict_refuses_select_below_the_floor(capsys):
    line = _error(capsys, "--shape", "llada-8b", "--select", "0.05", "--blocks", "8", "--strict")
    assert "select=0.05 asks for 410 of 8192 blocks" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shape", "llada-8b", "--select", "0", "--blocks", "8"], "0 is outside (0, 1]"),
        (["--shape", "llada-8b", "--select", "0.3,1.5", "--blocks", "8"], "1.5 is outside"),
        (["--shape", "llada-8b", "--select", "-0.2", "--blocks", "8"], "-0.2 is outside"),
        (["--shape", "llada-8b", "--select", "abc", "--blocks", "8"], "'abc' is not a number"),
        (["--shape", "llada-8b", "--blocks", "0"], "--blocks 0 must be in [1, 1,000,000]"),
        # found by an audit: giant allocations, and values silently ignored or accepted
        (["--shape", "llada-8b", "--blocks", "99999999"], "--blocks 99999999 must be in"),
        (["--shape", "llada-8b", "--seq-len", "10**10".replace("10**10", "10000000000"),
          "--block-size", "16"], "key blocks; at most 1,000,000"),
        (["--shape", "99999999x99999999", "--blocks", "8"], "heads; at most 1,000,000"),
        (["--shape", "8x8", "--blocks", "8", "--kv-heads", "4"], "--shape 8x8x4"),
        (["--shape", "8x8", "--blocks", "8", "--synthetic", "lognormal", "--sigma", "inf"],
         "--sigma inf must be a positive finite spread"),
        (["--shape", "llada-8b", "--seq-len", "0", "--block-size", "4"], "must be at least 1"),
        (["--shape", "llada-8b"], "give the number of key blocks"),
        (["--blocks", "8"], "give --importance FILE or --shape"),
        (["--shape", "7y3", "--blocks", "8"], "--shape '7y3'"),
        (["--shape", "4x6x4", "--blocks", "8"], "multiple of KV_HEADS"),
        (["--shape", "4x4", "--blocks", "8", "--scale", "1.5"], "--scale 1.5 must be in"),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, argv, message):
    assert message in _error(capsys, *argv)


def test_bad_importance_files(capsys, tmp_path):
    wrong = HeadImportance(torch.randn(28, 28), "query", {}).save(tmp_path / "w.safetensors")
    line = _error(capsys, "--importance", str(wrong), "--shape", "llada-8b", "--blocks", "8")
    assert "shape (28, 28)" in line and "needs (32, 32)" in line
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00{broken")
    assert "cannot read importance file" in _error(capsys, "--importance", str(garbage),
                                                   "--blocks", "8")
    assert "not found" in _error(capsys, "--importance", str(tmp_path / "none.safetensors"),
                                 "--blocks", "8")
    nan_pt = tmp_path / "nan.pt"
    torch.save({"importance_scores": {0: torch.full((4,), float("nan"))}}, nan_pt)
    assert "no finite value" in _error(capsys, "--importance", str(nan_pt), "--negate",
                                       "--blocks", "8")
    assert "--negate (HeadIG loss gradients) or --no-negate" in _error(
        capsys, "--importance", str(nan_pt), "--blocks", "8")
    assert "cannot be combined" in _error(capsys, "--importance", str(wrong), "--synthetic",
                                          "uniform", "--blocks", "8")


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["budget", "--help"])
    assert exit_.value.code == 0
    assert "adllm budget --shape llada-8b --synthetic lognormal" in capsys.readouterr().out


def test_units_per_query_head_and_kv_heads_option(capsys, tmp_path):
    per_query = _json(capsys, "--shape", "dream-7b", "--synthetic", "lognormal", "--gqa",
                      "query", "--select", "0.3", "--blocks", "16")
    assert per_query["units_per_layer"] == 28 and per_query["unit"] == "query-head"
    assert per_query["options"]["gqa"] == "query"
    old = _json(capsys, "--shape", "dream-7b", "--synthetic", "lognormal", "--gqa", "q",
                "--select", "0.3", "--blocks", "16")  # the old spelling still parses
    assert old == per_query
    path = HeadImportance(torch.randn(28, 28), "query", {}).save(tmp_path / "q.safetensors")
    grouped = _json(capsys, "--importance", str(path), "--kv-heads", "4", "--select", "0.3",
                    "--blocks", "16")
    assert grouped["units_per_layer"] == 4
    assert "does not divide" in _error(capsys, "--importance", str(path), "--kv-heads", "5",
                                       "--blocks", "16")


def test_named_shapes_are_the_model_presets(capsys):
    from adaptive_dllm.models.config import ModelConfig

    for name in ("llada-8b", "dream-7b"):
        cfg = ModelConfig.preset(name)
        report = _json(capsys, "--shape", name, "--synthetic", "uniform", "--select", "0.5",
                       "--blocks", "8")
        assert report["n_layers"] == cfg.n_layers
        assert report["units_per_layer"] == cfg.n_kv_heads
