"""`adllm prune`: held-out NLL of most / least / random prunings, task command, errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from adaptive_dllm.cli import main
from adaptive_dllm.importance import HeadImportance
from adaptive_dllm.models.checkpoints import save_checkpoint
from adaptive_dllm.models.families import get_family
from adaptive_dllm.models.transformer import Transformer

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("byte_model")
    config_json = {
        "model_type": "llada", "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
        "mlp_hidden_size": 48, "vocab_size": 258, "embedding_size": 264,
        "max_sequence_length": 64, "mask_token_id": 257, "eos_token_id": 256, "pad_token_id": 256,
        "adllm_tokenizer": "bytes",
    }
    torch.manual_seed(0)
    model = Transformer(get_family("llada").parse_config(config_json, {}))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    save_checkpoint(model, directory, config_json)
    (directory / "heldout.txt").write_text(TEXT)
    return directory


@pytest.fixture
def importance(tmp_path):
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.8, 0.7, 0.2, 0.6]])
    return HeadImportance(scores, "query", {"estimator": "test"}).save(tmp_path / "imp.safetensors")


def test_nll_report_json(ckpt, importance, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code = main(["prune", "--importance", str(importance), "--model", str(ckpt), "--device", "cpu",
                 "--k", "2", "--seeds", "3", "--out", str(report_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert json.loads(report_path.read_text()) == report
    assert [r["which"] for r in report["runs"]] == ["most", "least", "random", "random", "random"]
    most = report["runs"][0]
    assert most["pruned"] == [[0, 0], [1, 0]] and most["n_pruned"] == 2
    assert set(report["baseline"]) == {"nll@0.15", "nll@0.5", "nll@0.9", "nll_mean"}
    assert report["settings"]["metric"]["passages"] == 4  # 261 bytes / 64
    assert "most: 2 heads pruned" in err  # progress lines go to stderr with --json
    assert report["summary"]["nll_mean"]["random_std"] > 0  # seeds prune different heads


def test_table_output_and_per_layer(ckpt, importance, capsys):
    code = main(["prune", "--importance", str(importance), "--model", str(ckpt), "--device", "cpu",
                 "--fraction", "0.25", "--scope", "per-layer", "--which", "most,least",
                 "--mask-ratios", "0.5"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "fraction 0.25 per_layer" in out and "nll_mean" in out and "baseline" in out


def test_task_command(importance, tmp_path, capsys):
    script = tmp_path / "task.py"
    script.write_text("import json, sys\ng = json.load(open(sys.argv[1]))\nprint(len(g['pruned']))\n")
    code = main(["prune", "--importance", str(importance), "--k", "3", "--which", "least",
                 "--task-cmd", f"{sys.executable} {script} {{gates}}", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    report = json.loads(out)
    assert report["baseline"] == {"task": 0.0} and report["runs"][0]["metrics"] == {"task": 3.0}


@pytest.mark.parametrize("argv, message", [
    (["--which", "middle"], "--which"),
    (["--k", "8"], "keeping one head per layer"),
    (["--seeds", "0"], "--seeds"),
])
def test_errors_are_one_line(importance, capsys, argv, message):
    code = main(["prune", "--importance", str(importance), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("adllm prune: error:") and message in err[0]


def test_nll_metric_scores_every_ratio_and_their_mean():
    from adaptive_dllm.cli.prune import nll_metric
    from adaptive_dllm.evaluation.likelihood import masked_nll
    from adaptive_dllm.models import ModelConfig

    model = Transformer(ModelConfig.preset("llada-tiny")).eval().requires_grad_(False)
    ids = torch.randint(0, 120, (2, 16), generator=torch.Generator().manual_seed(0))
    scores = nll_metric(ids, (0.5, 0.9), seed=1, batch_size=8)(model)
    assert set(scores) == {"nll@0.5", "nll@0.9", "nll_mean"}
    assert scores["nll@0.9"] == masked_nll(model, ids, [0.9], seed=1)[0].bits_per_token
    assert scores["nll_mean"] == pytest.approx((scores["nll@0.5"] + scores["nll@0.9"]) / 2)


@pytest.mark.parametrize("argv", [["--text", "x.txt"], ["--mask-ratios", "0.5"],
                                  ["--nll-seed", "3"], ["--batch-size", "2"]])
def test_nll_options_with_a_task_command_are_refused(importance, capsys, argv):
    """Found by an audit: the NLL metric's options were silently ignored under --task-cmd."""
    code = main(["prune", "--importance", str(importance), "--task-cmd", "true {gates}", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and argv[0] in err[0] and "--task-cmd" in err[0]
