"""``adllm eval nll``: output formats, defaults from the model directory, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.cli import main
from adaptive_dllm.models import ModelConfig, Transformer
from adaptive_dllm.models.checkpoints import save_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random byte-level LLaDA checkpoint without heldout.txt."""
    directory = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = ModelConfig(family="llada", vocab_size=264, hidden_size=32, n_layers=1, n_heads=4,
                         n_kv_heads=2, intermediate_size=64, max_seq_len=64, mask_id=257,
                         eos_id=256, pad_id=256)
    save_checkpoint(Transformer(config), directory, {
        "model_type": "llada", "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 1,
        "mlp_hidden_size": 64, "vocab_size": 258, "embedding_size": 264, "max_sequence_length": 64,
        "mask_token_id": 257, "eos_token_id": 256, "pad_token_id": 256, "adllm_tokenizer": "bytes",
    })
    return directory


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("Enter Romeo.\n" * 40)  # 520 bytes: 8 passages of 64
    return path


def run(capsys, *argv):
    rc = main(["eval", "nll", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_output(capsys, tiny_dir, text_file):
    # --device cpu: the default is CUDA where there is one, and bfloat16 there.
    rc, out, _ = run(capsys, "--model", str(tiny_dir), "--text", str(text_file), "--json",
                     "--mask-ratios", "0.15,0.5", "--seed", "3", "--device", "cpu")
    assert rc == 0
    record = json.loads(out)
    assert record["unit"] == "byte" and record["device"] == "cpu" and record["dtype"] == "float32"
    r15, r50 = record["results"]
    assert (r15["mask_ratio"], r15["n_passages"], r15["length"], r15["seed"]) == (0.15, 8, 64, 3)
    assert r15["n_masked"] == 8 * 10 and r50["n_masked"] == 8 * 32
    assert 0 < r15["bits_per_token"] < 12


def test_table_output_and_options(capsys, tiny_dir, text_file):
    rc, out, _ = run(capsys, "--model", str(tiny_dir), "--text", str(text_file), "--length", "32",
                     "--max-passages", "3", "--batch-size", "2", "--mask-ratios", "0.5")
    assert rc == 0
    assert "3 passages of 32 bytes" in out and "bits/byte" in out
    assert len(out.strip().splitlines()) == 4  # model, text, header, one ratio


def test_same_seed_same_numbers(capsys, tiny_dir, text_file):
    args = ("--model", str(tiny_dir), "--text", str(text_file), "--json")
    first, second = (json.loads(run(capsys, *args)[1]) for _ in range(2))
    assert first == second


def test_bundled_model_defaults_to_its_heldout_text(capsys):
    rc, out, _ = run(capsys, "--max-passages", "1", "--mask-ratios", "0.5", "--json")
    assert rc == 0
    record = json.loads(out)
    assert record["text"].endswith("heldout.txt")
    assert record["results"][0]["length"] == 1024 and record["results"][0]["n_masked"] == 512


@pytest.mark.parametrize(("argv", "message"), [
    (["--mask-ratios", "0"], "each value must be in (0, 1]"),
    (["--mask-ratios", "1.5"], "each value must be in (0, 1]"),
    (["--mask-ratios", "a,b"], "not a comma-separated list"),
    (["--batch-size", "0"], "--batch-size: 0 must be at least 1"),
    (["--max-passages", "0"], "--max-passages: 0 must be at least 1"),
    (["--length", "65"], "--length 65 must be in [1, 64]"),
    (["--text", "/nonexistent.txt"], "does not exist"),
    ([], "ships no heldout.txt; pass --text FILE"),
])
def test_errors_are_one_line_exit_2(capsys, tiny_dir, argv, message):
    rc, _, err = run(capsys, "--model", str(tiny_dir), *argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("adllm eval")  # "adllm eval [nll]: error:"
    assert ": error: " in err and message in err


def test_missing_model_and_bad_text(capsys, tmp_path):
    rc, _, err = run(capsys, "--model", str(tmp_path / "nope"))
    assert rc == 2 and err.count("\n") == 1 and "does not exist" in err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad" * 200)
    # The bundled model is byte-level: it scores any bytes, UTF-8 or not.
    rc, out, err = run(capsys, "--text", str(bad), "--length", "64", "--max-passages", "2",
                       "--json", "--quiet")
    assert rc == 0 and json.loads(out)["results"][0]["n_passages"] == 2


def test_eval_without_subcommand_shows_help(capsys):
    assert main(["eval"]) == 2
    assert "nll" in capsys.readouterr().err


def test_fidelity_passages_zero_skips_the_likelihood_part(capsys):
    """--passages 0 is documented as "no likelihood part"; a review caught it being refused."""
    from adaptive_dllm.cli.arguments import non_negative_int

    assert non_negative_int("0") == 0
    from adaptive_dllm.cli import build_parser

    args = build_parser().parse_args(["eval", "fidelity", "--passages", "0"])
    assert args.passages == 0
