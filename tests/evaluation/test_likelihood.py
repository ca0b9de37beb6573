"""Masked-token NLL: the definition (counts, masks), exact values, determinism, logit alignment."""

from __future__ import annotations

import math

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.likelihood import mask_count, mask_orders, masked_nll
from adaptive_dllm.models import ModelConfig, Transformer
from adaptive_dllm.models.families import get_family

V, MASK = 40, 39


def tiny_model(family: str = "llada", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(family=family, vocab_size=V, hidden_size=32, n_layers=2, n_heads=4,
                         n_kv_heads=2, intermediate_size=48, max_seq_len=64, mask_id=MASK)
    return Transformer(config).eval()


def passages(P: int = 5, L: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, MASK, (P, L), generator=torch.Generator().manual_seed(seed))


class Oracle(torch.nn.Module):
    """Knows the (single, repeated) passage: puts logit 50 on the true token of each row.

    ``shift`` mimics Dream: row i scores token i + 1.
    """

    def __init__(self, truth: torch.Tensor, family: str) -> None:
        super().__init__()
        self.config = tiny_model(family).config
        self.truth, self.shift = truth, get_family(family).logit_shift
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        target = torch.roll(self.truth, -1) if self.shift else self.truth
        return 50.0 * torch.nn.functional.one_hot(target, V).float().expand(B, L, V)


@pytest.mark.parametrize(("n", "ratio", "k"), [
    (1024, 0.15, 154), (1024, 0.5, 512), (1024, 0.9, 922), (10, 0.25, 3), (10, 0.35, 4),
    (10, 0.05, 1), (10, 0.01, 1), (4, 1.0, 4),
])
def test_mask_count(n, ratio, k):
    assert mask_count(n, ratio) == k


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, math.nan])
def test_mask_count_rejects_bad_ratio(ratio):
    with pytest.raises(AdllmError, match="mask ratio"):
        mask_count(10, ratio)


def test_mask_orders_are_permutations_seeded_and_skip_first():
    orders = mask_orders(3, 10, seed=1, skip_first=False)
    assert all(sorted(row.tolist()) == list(range(10)) for row in orders)
    assert torch.equal(orders, mask_orders(3, 10, seed=1, skip_first=False))
    assert not torch.equal(orders, mask_orders(3, 10, seed=2, skip_first=False))
    shifted = mask_orders(3, 10, seed=1, skip_first=True)
    assert all(sorted(row.tolist()) == list(range(1, 10)) for row in shifted)
    # passage p's order does not depend on how many passages follow it
    assert torch.equal(mask_orders(5, 10, seed=1, skip_first=False)[:3], orders)


def test_uniform_model_scores_log2_vocab_exactly():
    model = tiny_model()
    torch.nn.init.zeros_(model.lm_head.weight)  # all logits 0: uniform over V
    results = masked_nll(model, passages(), [0.15, 0.5, 1.0])
    for r in results:
        assert r.bits_per_token == pytest.approx(math.log2(V), abs=1e-6)
        assert r.stderr == pytest.approx(0.0, abs=1e-6)
    assert [r.n_masked for r in results] == [5 * 4, 5 * 12, 5 * 24]


def test_matches_a_direct_computation():
    model, x = tiny_model(), passages(P=3)
    (result,) = masked_nll(model, x, [0.5], seed=7)
    orders = mask_orders(3, 24, seed=7, skip_first=False)[:, :12]
    total = 0.0
    for p in range(3):
        inputs = x[p].clone()
        inputs[orders[p]] = MASK
        logp = torch.log_softmax(model(inputs[None])[0].double(), -1)
        total -= sum(logp[i, x[p, i]].item() for i in orders[p].tolist())
    assert result.bits_per_token == pytest.approx(total / math.log(2) / 36, rel=1e-5)


def test_deterministic_and_batch_size_invariant():
    model, x = tiny_model(), passages(P=7)
    a = masked_nll(model, x, [0.15, 0.9], seed=3, batch_size=1)
    b = masked_nll(model, x, [0.15, 0.9], seed=3, batch_size=4)
    c = masked_nll(model, x, [0.15, 0.9], seed=3, batch_size=4)
    assert b == c
    for ra, rb in zip(a, b, strict=True):
        assert ra.bits_per_token == pytest.approx(rb.bits_per_token, rel=1e-5)
    other = masked_nll(model, x, [0.15], seed=4)[0]
    assert other.bits_per_token != b[0].bits_per_token


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_logit_alignment_per_family(family):
    truth = passages(P=1)[0]
    x = truth.expand(4, -1).clone()
    (right,) = masked_nll(Oracle(truth, family), x, [0.5])
    assert right.bits_per_token < 1e-6
    if family == "dream":  # position 0 has no prediction and is never masked
        assert right.n_masked == 4 * mask_count(23, 0.5)
    other = "dream" if family == "llada" else "llada"
    wrong = Oracle(truth, other)
    wrong.config = tiny_model(family).config  # declared family disagrees with the model's outputs
    assert masked_nll(wrong, x, [0.5])[0].bits_per_token > 10


def test_input_errors():
    model = tiny_model()
    with pytest.raises(AdllmError, match="mask id"):
        masked_nll(model, torch.full((1, 8), MASK), [0.5])
    with pytest.raises(AdllmError, match="exceeds the model maximum"):
        masked_nll(model, torch.zeros(1, 65, dtype=torch.long), [0.5])
    with pytest.raises(AdllmError, match="non-empty"):
        masked_nll(model, torch.zeros(4, dtype=torch.long), [0.5])
    with pytest.raises(AdllmError, match="mask ratio"):
        masked_nll(model, passages(), [0.0])
    with pytest.raises(AdllmError, match="batch size"):
        masked_nll(model, passages(), [0.5], batch_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu():
    model, x = tiny_model(), passages()
    cpu = masked_nll(model, x, [0.5])[0]
    gpu = masked_nll(model.cuda(), x, [0.5])[0]
    assert gpu.bits_per_token == pytest.approx(cpu.bits_per_token, rel=1e-4)
