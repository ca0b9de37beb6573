"""`adllm importance estimate | show | compare | import` on a tiny byte-level checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.cli import main
from adaptive_dllm.importance import HeadImportance
from adaptive_dllm.models.checkpoints import save_checkpoint
from adaptive_dllm.models.families import get_family
from adaptive_dllm.models.transformer import Transformer

TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; "
        "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. ") * 4


def byte_checkpoint(directory):
    """A 2-layer byte-level model (4 query / 2 KV heads) with the byte tokenizer marker."""
    config_json = {
        "model_type": "llada", "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
        "mlp_hidden_size": 48, "vocab_size": 258, "embedding_size": 264, "rope_theta": 10000.0,
        "max_sequence_length": 128, "mask_token_id": 257, "eos_token_id": 256, "pad_token_id": 256,
        "adllm_tokenizer": "bytes",
    }
    torch.manual_seed(0)
    model = Transformer(get_family("llada").parse_config(config_json, {}))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    save_checkpoint(model, directory, config_json)
    (directory / "heldout.txt").write_text(TEXT)
    return directory


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return byte_checkpoint(tmp_path_factory.mktemp("byte_model"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "richard.txt"
    path.write_text(TEXT)
    return path


def _run(capsys, *argv):
    code = main(["importance", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, *argv):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("adllm importance: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_estimate_headig_prints_cost_and_writes_the_artifact(ckpt, text_file, tmp_path, capsys):
    out_file = tmp_path / "hig.safetensors"
    code, out, err = _run(capsys, "estimate", "--method", "headig", "--model", str(ckpt), "--data",
                          str(text_file), "--text-length", "32", "--n", "2", "--steps", "2",
                          "--path-samples", "2", "--mask-ratios", "0.5", "--mask-samples", "1",
                          "--device", "cpu", "--seed", "7", "--out", str(out_file))
    assert code == 0, err
    assert "1 x S 1 x K 2 x P 2 = 4 forward+backward passes per example" in out
    assert "completeness" in out and f"wrote {out_file}" in out
    imp = HeadImportance.load(out_file)
    assert imp.scores.shape == (2, 4) and imp.metadata["estimator"] == "headig"
    assert imp.metadata["seed"] == 7 and imp.metadata["data"]["n"] == 2
    assert imp.metadata["data"]["length"] == 32


@pytest.mark.parametrize("method", ["entropy", "coverage", "uniform", "random"])
def test_estimate_cheap_methods(ckpt, text_file, tmp_path, capsys, method):
    out_file = tmp_path / f"{method}.safetensors"
    code, out, err = _run(capsys, "estimate", "--method", method, "--model", str(ckpt),
                          "--data", str(text_file), "--text-length", "64", "--block-size", "16",
                          "--device", "cpu", "--out", str(out_file), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["metadata"]["estimator"] == method and record["path"] == str(out_file)
    assert HeadImportance.load(out_file).scores.shape == (2, 4)


def test_show_summary_plot_and_json(tmp_path, capsys):
    scores = torch.arange(8.0).view(2, 4) - 3
    imp = HeadImportance(scores, "query", {"estimator": "headig", "seed": 1})
    path = imp.save(tmp_path / "a.safetensors")
    code, out, _ = _run(capsys, "show", str(path), "--top", "2", "--plot", str(tmp_path / "h.png"))
    assert code == 0
    assert "top 2: L1H3 4, L1H2 3" in out and "bottom 2: L0H0 -3, L0H1 -2" in out
    assert "(4 positive, 3 negative, 0 NaN)" in out
    assert (tmp_path / "h.png").stat().st_size > 1000
    code, out, _ = _run(capsys, "show", str(path), "--json")
    info = json.loads(out)
    assert info["top"][0] == [1, 3, 4.0] and info["layer_means"] == [-1.5, 2.5]


def test_compare(tmp_path, capsys):
    x = torch.arange(8.0).view(2, 4)
    a = HeadImportance(x, "query", {}).save(tmp_path / "a.safetensors")
    b = HeadImportance(-x, "query", {}).save(tmp_path / "b.safetensors")
    code, out, _ = _run(capsys, "compare", str(a), str(b), "--top-k", "2", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["spearman"] == pytest.approx(-1) and result["top_overlap"] == 0
    code, out, _ = _run(capsys, "compare", str(a), str(a))
    assert "spearman 1.000" in out and "top-2 overlap 1.00" in out


def test_import_upstream(tmp_path, capsys):
    src = tmp_path / "head_importance.pt"
    torch.save({"importance_scores": {0: torch.tensor([1.0, -2.0]), 1: torch.tensor([0.5, 3.0])},
                "metadata": {"method": "loss_gateIG"}}, src)
    out_file = tmp_path / "imp.safetensors"
    code, out, _ = _run(capsys, "import", str(src), "--negate", "--family", "llada", "--out", str(out_file))
    assert code == 0 and "negated" in out
    imp = HeadImportance.load(out_file)
    assert imp.scores.tolist() == [[-1.0, 2.0], [-0.5, -3.0]]
    assert imp.metadata["estimator"] == "loss_gateIG"


def test_errors_are_one_line(ckpt, text_file, tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    assert "needs calibration data" in _error(capsys, "estimate", "--method", "entropy", "--model",
                                              str(ckpt), "--out", out, "--device", "cpu")
    assert "must end in .safetensors" in _error(capsys, "estimate", "--method", "uniform",
                                                "--model", str(ckpt), "--out", str(tmp_path / "x.pt"))
    assert "--layers" in _error(capsys, "estimate", "--method", "headig", "--model", str(ckpt),
                                "--data", str(text_file), "--layers", "a:b", "--out", out)
    assert "not found" in _error(capsys, "show", str(tmp_path / "missing.safetensors"))
    assert "steps" in _error(capsys, "estimate", "--method", "headig", "--model", str(ckpt),
                             "--data", str(text_file), "--steps", "0", "--out", out)
