"""``adllm eval fidelity``: JSON / table / plot output and one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.cli import main
from adaptive_dllm.models import ModelConfig, Transformer
from adaptive_dllm.models.checkpoints import save_checkpoint

# 8 passages of 64 bytes; 4 prompts of 32 bytes + 16 generated; 8-byte blocks (reference kernel).
FAST = ["--length", "64", "--passages", "2", "--prompts", "1", "--prompt-length", "32",
        "--gen-length", "16", "--steps", "4", "--block-length", "8", "--block-size", "8",
        "--calibration", "2", "--mask-ratios", "0.5"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random byte-level LLaDA checkpoint (2 layers, 4 query / 2 KV heads, context 64)."""
    directory = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = ModelConfig(family="llada", vocab_size=264, hidden_size=32, n_layers=2, n_heads=4,
                         n_kv_heads=2, intermediate_size=64, max_seq_len=64, mask_id=257,
                         eos_id=256, pad_id=256)
    save_checkpoint(Transformer(config), directory, {
        "model_type": "llada", "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
        "mlp_hidden_size": 64, "vocab_size": 258, "embedding_size": 264, "max_sequence_length": 64,
        "mask_token_id": 257, "eos_token_id": 256, "pad_token_id": 256, "adllm_tokenizer": "bytes",
    })
    return directory


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "held.txt"
    path.write_text("".join(f"Enter Romeo {i}, with a torch.\n" for i in range(20)))
    return path


def run(capsys, *argv):
    rc = main(["eval", "fidelity", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_and_plot(capsys, tiny_dir, text_file, tmp_path):
    plot = tmp_path / "fid.png"
    # --device cpu: the record's device and exact zeros are checked (a GPU runs bfloat16).
    rc, out, _ = run(capsys, "--model", str(tiny_dir), "--text", str(text_file), *FAST,
                     "--select", "0.5,1", "--json", "--plot", str(plot), "--device", "cpu")
    assert rc == 0
    record = json.loads(out)
    for key in ("model", "text", "device", "dtype", "torch", "date", "backend", "backend_note",
                "settings", "importance", "passages", "rows", "passage_length"):
        assert key in record
    assert record["device"] == "cpu" and record["backend"] == "gather"
    assert [(r["mode"], r["select"]) for r in record["rows"]] == [
        ("dense", 1.0), ("uniform", 0.5), ("uniform", 1.0), ("adaptive", 0.5), ("adaptive", 1.0)]
    assert record["importance"]["source"] == "estimated"
    for row in record["rows"]:
        if row["select"] == 1.0:
            assert row["nll"][0]["delta"] == 0.0 and row["token_agreement"] == 1.0
            assert row["kl_final"] == row["kl_commit"] == 0.0
        else:
            assert row["keep_nll"] == 0.5 and row["keep_gen"] == 0.5
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_table(capsys, tiny_dir, text_file):
    rc, out, _ = run(capsys, "--model", str(tiny_dir), "--text", str(text_file), *FAST,
                     "--select", "0.5", "--modes", "dense,uniform", "--prompts", "0")
    assert rc == 0
    assert "forced to the 'gather' backend" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    assert "bpb@0.5 (delta)" in lines[header] and "keep gen" in lines[header]
    assert [line.split()[0] for line in lines[header + 1:]] == ["dense", "uniform"]


def test_importance_file(capsys, tiny_dir, text_file, tmp_path):
    from adaptive_dllm.importance.estimators import random_importance
    from adaptive_dllm.models.checkpoints import load

    model, _ = load(str(tiny_dir))
    path = random_importance(model.config, seed=3).save(tmp_path / "imp.safetensors")
    rc, out, _ = run(capsys, "--model", str(tiny_dir), "--text", str(text_file), *FAST,
                     "--select", "0.5", "--modes", "dense,adaptive", "--importance", str(path),
                     "--prompts", "0", "--json")
    assert rc == 0
    record = json.loads(out)
    assert record["importance"]["source"] == "file" and record["passages"]["calibration"] == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--select", "0,0.5"], "--select '0,0.5': each value must be in (0, 1]"),
    (["--select", "1.5"], "each value must be in (0, 1]"),
    (["--select", "a"], "not a comma-separated list"),
    (["--modes", "dense,sparse"], "unknown mode(s) 'sparse'"),
    (["--mask-ratios", "0"], "--mask-ratios"),
    (["--importance", "x.safetensors", "--modes", "dense,uniform"], "only used by the adaptive"),
    (["--importance", "missing.safetensors"], "missing.safetensors"),
    (["--plot", "out.txt"], "'txt' file format; end the name in one of"),
    (["--plot", "no/such/dir/out.png"], "does not exist"),
    (["--passages", "9"], "lower --passages"),
    (["--gen-length", "48"], "exceeds the model context"),
    (["--skip", "1"], "skip"),
    (["--length", "100"], "--length 100"),
    (["--steps", "3"], "not a multiple of the number of blocks"),
])
def test_errors_are_one_line(capsys, tiny_dir, text_file, argv, message):
    rc, out, err = run(capsys, "--model", str(tiny_dir), "--text", str(text_file), *FAST, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("adllm eval: error: ")
    assert message in err


def test_block_size_outside_the_shared_choices_is_a_usage_error(capsys, tiny_dir, text_file):
    rc, out, err = run(capsys, "--model", str(tiny_dir), "--text", str(text_file), *FAST,
                       "--block-size", "48")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "adllm eval fidelity: error: argument --block-size: invalid choice: 48" in err


def test_adaptive_without_calibration_passages(capsys, tiny_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("x" * 64)  # one passage: nothing left to calibrate on
    rc, _, err = run(capsys, "--model", str(tiny_dir), "--text", str(short), *FAST,
                     "--passages", "1")
    assert rc == 2 and "pass --importance FILE" in err
