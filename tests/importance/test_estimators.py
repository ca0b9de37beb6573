"""Cheap estimators: exact block mass, row statistics, attention statistics, uniform/random, compare."""

from __future__ import annotations

import math

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance import HeadImportance
from adaptive_dllm.importance.calibration import CalibrationSet, Example
from adaptive_dllm.importance.comparison import average_importance, compare
from adaptive_dllm.importance.estimators import (
    STATISTICS,
    attention_statistics,
    block_mass,
    estimate_importance,
    random_importance,
    row_statistics,
    uniform_importance,
)
from adaptive_dllm.models import ModelConfig, Transformer


def tiny(family: str = "llada") -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=40, hidden_size=32, n_layers=2, n_heads=4,
                      n_kv_heads=2, intermediate_size=48, max_seq_len=64, mask_id=39)
    model = Transformer(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def brute_block_mass(q, k, bs, key_mask):
    B, H, L, D = q.shape
    kk = k.repeat_interleave(H // k.shape[1], dim=1)
    s = (q @ kk.transpose(-1, -2) / math.sqrt(D)).masked_fill(~key_mask[:, None, None, :], -math.inf)
    p = s.softmax(-1)
    n = math.ceil(L / bs)
    out = torch.zeros(B, H, n, n)
    for b in range(B):
        for qb in range(n):
            rows = [i for i in range(qb * bs, min(L, (qb + 1) * bs)) if key_mask[b, i]]
            for kb in range(n):
                if rows:
                    out[b, :, qb, kb] = p[b][:, rows][:, :, kb * bs:(kb + 1) * bs].sum(-1).mean(-1)
    return out


@pytest.mark.parametrize("L, bs, kv", [(37, 8, 2), (32, 16, 4), (5, 8, 1)])
def test_block_mass_matches_brute_force(L, bs, kv):
    gen = torch.Generator().manual_seed(L)
    q, k = torch.randn(2, 4, L, 8, generator=gen), torch.randn(2, kv, L, 8, generator=gen)
    key_mask = torch.ones(2, L, dtype=torch.bool)
    key_mask[1, :2] = False  # left padding
    got = block_mass(q, k, block_size=bs, key_mask=key_mask)
    torch.testing.assert_close(got, brute_block_mass(q, k, bs, key_mask), atol=1e-6, rtol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(()), atol=1e-5)


def test_row_statistics_on_known_rows():
    uniform = torch.full((8,), 1 / 8)
    onehot = torch.zeros(8)
    onehot[3] = 1
    stats = row_statistics(torch.stack([uniform, onehot]), top_frac=0.25, coverage=0.9, select=0.5)
    assert stats["entropy"].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert stats["effective"].tolist() == pytest.approx([1.0, 1 / 8], abs=1e-6)
    assert stats["topk"].tolist() == pytest.approx([0.75, 0.0], abs=1e-6)  # 2 of 8 blocks kept
    assert stats["coverage"].tolist() == pytest.approx([1.0, 1 / 8])  # 8 blocks vs 1 for 90%
    assert stats["deficit"].tolist() == pytest.approx([0.5, 0.0], abs=1e-6)  # 4 of 8 kept


def test_attention_statistics_artifacts_are_deterministic_and_documented():
    gen = torch.Generator().manual_seed(0)
    exs = [Example(torch.randint(0, 39, (40,), generator=gen), 8, f"e{i}") for i in range(2)]
    data = CalibrationSet(tuple(exs), {"kind": "test"})
    model = tiny()
    out = attention_statistics(model, data, block_size=8)
    assert set(out) == set(STATISTICS)
    for name, imp in out.items():
        assert imp.scores.shape == (2, 4) and imp.head_kind == "query"
        assert torch.isfinite(imp.scores).all() and (imp.scores >= 0).all() and (imp.scores <= 1).all()
        assert imp.metadata["estimator"] == name and imp.metadata["data"] == {"kind": "test"}
        assert imp.metadata["settings"]["block_size"] == 8
    again = attention_statistics(model, data, block_size=8)
    assert all(torch.equal(out[n].scores, again[n].scores) for n in STATISTICS)
    completion = attention_statistics(model, data, block_size=8, queries="completion", seed=1)
    assert not torch.equal(completion["entropy"].scores, out["entropy"].scores)
    # Normalised entropy and effective blocks rank heads alike (monotone per row; nearly so on means).
    assert compare(out["entropy"], out["effective"])["spearman"] > 0.8


def test_attention_statistics_on_dream_fixture(fixture_model):
    model = fixture_model("dream_tiny")
    ex = Example(torch.arange(1, 33), 0, "e")  # span may start at 0: Dream never masks position 0
    out = attention_statistics(model, [ex], block_size=4, mask_ratio=1.0)
    assert out["coverage"].scores.shape == (2, 4)
    assert out["entropy"].metadata["family"] == "dream"


def test_attention_statistics_rejects_bad_options():
    ex = [Example(torch.arange(1, 10), 2, "e")]
    for bad in (dict(block_size=0), dict(mask_ratio=1.5), dict(queries="x"), dict(coverage=0.0)):
        with pytest.raises(AdllmError):
            attention_statistics(tiny(), ex, **bad)
    with pytest.raises(AdllmError, match="at least one"):
        attention_statistics(tiny(), [])
    model = tiny()  # found by an audit: a huge block size allocated hundreds of GB
    with pytest.raises(AdllmError, match=f"exceeds the model's maximum length {model.config.max_seq_len}"):
        attention_statistics(model, ex, block_size=100_000)


def test_uniform_and_random():
    cfg = tiny().config
    u = uniform_importance(cfg)
    assert torch.equal(u.scores, torch.ones(2, 4)) and u.metadata["estimator"] == "uniform"
    r1, r2 = random_importance(cfg, seed=1), random_importance(cfg, seed=2)
    assert torch.equal(r1.scores, random_importance(cfg, seed=1).scores)
    assert not torch.equal(r1.scores, r2.scores) and r1.metadata["seed"] == 1


def _imp(scores):
    return HeadImportance(torch.as_tensor(scores, dtype=torch.float32), "query", {})


def test_compare_correlations_and_overlaps():
    x = torch.arange(16.0).view(2, 8)
    same = compare(_imp(x), _imp(2 * x + 1), top_k=4)
    assert same["spearman"] == pytest.approx(1) and same["pearson"] == pytest.approx(1)
    assert same["top_overlap"] == 1 and same["bottom_overlap"] == 1 and same["chance_overlap"] == 0.25
    rev = compare(_imp(x), _imp(-(x ** 3)), top_k=4)
    assert rev["spearman"] == pytest.approx(-1) and rev["top_overlap"] == 0
    y = x.clone()
    y[0, 0] = float("nan")
    assert compare(_imp(x), _imp(y))["n_heads"] == 15
    ties = compare(_imp([[1.0, 1.0, 2.0, 3.0]]), _imp([[1.0, 2.0, 2.0, 3.0]]))
    assert -1 <= ties["spearman"] <= 1
    with pytest.raises(AdllmError, match="cannot compare"):
        compare(_imp(x), _imp(x.view(4, 4)))


def test_estimate_importance_dispatches_by_name():
    model = tiny()
    ex = [Example(torch.arange(1, 20), 3, "e")]
    hig = estimate_importance(model, ex, method="headig", steps=2, path_samples=1, mask_samples=1, seed=5)
    assert hig.metadata["estimator"] == "headig" and hig.metadata["settings"]["steps"] == 2
    assert hig.metadata["seed"] == 5
    cov = estimate_importance(model, ex, method="coverage", block_size=4)
    assert cov.metadata["estimator"] == "coverage"
    assert estimate_importance(model, method="random", seed=2).metadata["seed"] == 2
    # the default follows the retrieval study: entropy
    assert estimate_importance(model, ex, block_size=4).metadata["estimator"] == "entropy"
    for kwargs, message in ((dict(method="nope"), "unknown importance method"),
                            (dict(method="entropy"), "needs calibration examples"),
                            (dict(method="uniform", steps=2), "takes no options")):
        with pytest.raises(AdllmError, match=message):
            estimate_importance(model, **kwargs)
    with pytest.raises(AdllmError, match="steps"):
        estimate_importance(model, ex, method="entropy", steps=3)


def test_average_is_the_head_wise_mean_ignoring_nan_heads():
    a = HeadImportance(torch.tensor([[1.0, float("nan")], [2.0, float("nan")]]), "query", {})
    b = HeadImportance(torch.tensor([[3.0, 5.0], [float("nan"), float("nan")]]), "query",
                       {"estimator": "entropy", "seed": 2})
    mean = average_importance([a, b], sources=["a.safetensors", "b.safetensors"])
    assert mean.scores[0].tolist() == [2.0, 5.0] and mean.scores[1, 0] == 2.0
    assert mean.scores[1, 1].isnan()
    assert [s["file"] for s in mean.metadata["sources"]] == ["a.safetensors", "b.safetensors"]
    with pytest.raises(AdllmError, match="b.safetensors has kv scores"):
        average_importance([a, HeadImportance(torch.ones(2, 2), "kv", {})],
                           sources=["a.safetensors", "b.safetensors"])


def test_random_importance_distributions_are_seeded_and_distinct():
    cfg = ModelConfig(family="llada", vocab_size=40, hidden_size=32, n_layers=16, n_heads=16,
                      n_kv_heads=16, intermediate_size=48, max_seq_len=64, mask_id=39)
    normal = random_importance(cfg, seed=1, distribution="normal").scores
    expo = random_importance(cfg, seed=1, distribution="exponential").scores
    assert torch.equal(normal, random_importance(cfg, seed=1, distribution="normal").scores)
    assert abs(normal.mean()) < 0.2 and abs(normal.std() - 1) < 0.15  # 256 draws of N(0, 1)
    assert (expo > 0).all() and abs(expo.mean() - 1) < 0.2 and expo.median() < expo.mean()
    with pytest.raises(AdllmError, match="distribution"):
        random_importance(cfg, distribution="cauchy")
