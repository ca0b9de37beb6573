"""scripts/train_tiny.py runs end to end on CPU with tiny settings and never trains on held-out works."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.evaluation import data
from adaptive_dllm.models import load


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("train_tiny")


@pytest.mark.slow
def test_tiny_cpu_run(script, fake_corpus, tmp_path, capsys):
    out, corpus = tmp_path / "run", fake_corpus
    rc = script.main(["--data", str(corpus), "--out", str(out),
                      "--device", "cpu", "--steps", "6", "--batch-size", "2", "--seq-len", "64",
                      "--d-model", "32", "--n-layers", "1", "--n-heads", "4", "--n-kv-heads", "2",
                      "--mlp-hidden", "64", "--warmup", "2", "--eval-every", "3", "--eval-passages", "2"])
    assert rc == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["train_works"] == ["hamlet", "lear"]
    assert log["heldout_works"] == list(data.HELDOUT_WORKS)
    assert [e["step"] for e in log["evals"]] == [3, 6]
    assert {r["mask_ratio"] for r in log["final"]["results"]} == {0.15, 0.5, 0.9}
    model, tok = load(out / "final", device="cpu")
    assert model.config.n_kv_heads == 2 and tok.mask_id == 257
    _, held = data.split_works(data.read_works(corpus))
    assert (out / "final" / "heldout.txt").read_bytes() == data.heldout_text(held)
    assert "final held-out mask ratio 0.5" in capsys.readouterr().out


def test_diffusion_loss_weights_masked_bytes_by_inverse_ratio(script):

    class Uniform(torch.nn.Module):
        config = type("C", (), {"family": "llada"})()

        def forward(self, ids):
            return torch.zeros(*ids.shape, 16)

    x = torch.randint(0, 8, (64, 128))
    loss = script.diffusion_loss(Uniform(), x, 15, torch.Generator().manual_seed(0))
    # E[masked / p] = 1 per byte, so the loss estimates log V; the stratified t keeps it close
    assert loss.item() == pytest.approx(torch.log(torch.tensor(16.0)).item(), rel=0.05)


def test_lr_schedule(script):
    args = script.parse_args(["--steps", "100", "--warmup", "10", "--lr", "1e-3", "--min-lr-ratio", "0.1"])
    assert script.lr_at(0, args) == pytest.approx(1e-4)
    assert script.lr_at(9, args) == pytest.approx(1e-3)
    assert script.lr_at(99, args) == pytest.approx(1e-4, rel=0.01)
    assert all(script.lr_at(s, args) >= script.lr_at(s + 1, args) for s in range(10, 99))
