"""Block scoring: exact mass (chunked torch, the oracle) and the pooled estimator."""

from __future__ import annotations

import math

import pytest
import torch

from adaptive_dllm.attention.mass import block_mass, block_mass_torch, pooled_block_scores


def _naive(q, k, bs, key_mask=None):
    """(B, H, N, N) block sums of the full softmax, materialising L x L (tests only)."""
    B, H, L, D = q.shape
    kr = k.float().repeat_interleave(H // k.shape[1], dim=1)
    s = q.float() @ kr.transpose(-1, -2) / math.sqrt(D)
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    if key_mask is not None:
        p = p * key_mask[:, None, :, None]
    N = -(-L // bs)
    p = torch.nn.functional.pad(p, (0, N * bs - L, 0, N * bs - L))
    return p.view(B, H, N, bs, N, bs).sum((3, 5))


@pytest.mark.parametrize("H,Hkv,L,bs", [(4, 4, 64, 16), (4, 2, 100, 32), (6, 2, 37, 8)])
def test_exact_mass_matches_naive(H, Hkv, L, bs):
    g = torch.Generator().manual_seed(L)
    q = torch.randn(2, H, L, 16, generator=g) * 2
    k = torch.randn(2, Hkv, L, 16, generator=g) * 2
    key_mask = torch.ones(2, L, dtype=torch.bool)
    key_mask[1, :5] = False  # left padding in row 1
    for km in (None, key_mask):
        ref = _naive(q, k, bs, km)
        for chunk in (1, 10_000, 1 << 30):  # one block per chunk ... everything at once
            got = block_mass_torch(q, k, block_size=bs, key_mask=km, chunk_bytes=chunk)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        # every valid query row distributes exactly one unit of mass
        rows = L * 2 if km is None else int(km.sum())
        assert abs(float(ref.sum()) - rows * H) < 1e-3


def test_units_sum_the_gqa_group():
    q = torch.randn(1, 6, 40, 16)
    k = torch.randn(1, 2, 40, 16)
    per_head = block_mass(q, k, block_size=8, units="query")
    per_kv = block_mass(q, k, block_size=8, units="kv")
    assert per_head.shape == (1, 6, 5, 5) and per_kv.shape == (1, 2, 5, 5)
    torch.testing.assert_close(per_kv, per_head.view(1, 2, 3, 5, 5).sum(2))


def _planted(H=4, Hkv=2, L=512, D=32, bs=32, seed=0):
    """q/k where each KV head attends strongly to a few random key blocks."""
    g = torch.Generator().manual_seed(seed)
    N = L // bs
    q = torch.randn(1, H, L, D, generator=g)
    k = torch.randn(1, Hkv, L, D, generator=g)
    direction = torch.randn(Hkv, D, generator=g)
    for h in range(Hkv):
        hot = torch.randperm(N, generator=g)[: N // 4]
        for j in hot.tolist():
            k[0, h, j * bs:(j + 1) * bs] += 3 * direction[h] * torch.rand(1, generator=g)
        q[0, h * (H // Hkv):(h + 1) * (H // Hkv)] += direction[h] * 0.5
    return q, k


def test_pooled_estimator_keeps_most_of_the_mass():
    """The cheap estimator, validated against the exact mass: its top-30% blocks keep at least
    90% of the mass the exact top-30% keeps (planted structure; on random-weight fixtures the
    attention is almost flat and any choice is close to random)."""
    for seed in range(3):
        q, k = _planted(seed=seed)
        exact = block_mass(q, k, block_size=32)
        pooled = block_mass(q, k, block_size=32, estimator="pooled")
        N = exact.shape[-1]
        kk = round(0.3 * N)
        best = exact.topk(kk, -1).values.sum()
        chosen = exact.gather(-1, pooled.topk(kk, -1).indices).sum()
        random = exact.sum() * kk / N
        assert chosen >= 0.9 * best, (seed, float(chosen / best))
        assert chosen > random * 1.5


def test_pooled_respects_padding():
    q, k = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    km = torch.ones(1, 40, dtype=torch.bool)
    km[0, :16] = False  # the first two blocks of 8 are padding
    s = pooled_block_scores(q, k, block_size=8, key_mask=km)
    assert torch.all(s[..., :2] == 0)  # no score for padding keys
    assert torch.all(s[:, :, :2] == 0)  # padding query rows contribute nothing


@pytest.mark.parametrize("kw", [{"units": "q"}, {"estimator": "poold"}])
def test_unknown_scoring_mode_is_an_error(kw):
    from adaptive_dllm.attention.mass import block_mass
    from adaptive_dllm.errors import AdllmError

    q, k = torch.randn(1, 4, 16, 8), torch.randn(1, 2, 16, 8)
    with pytest.raises(AdllmError, match="not valid"):
        block_mass(q, k, block_size=8, **kw)


def test_triton_mass_kernels_in_the_interpreter(triton_interpreter):
    """Both Triton scoring kernels on the CPU against the torch oracle: GQA, left padding, a
    length that is not a multiple of the block, and a scratch small enough to force several
    head chunks in the one-pass kernel (the GPU tests repeat this at real sizes)."""
    out = triton_interpreter("""
        import torch
        from adaptive_dllm.kernels.block_mass import block_mass_triton
        from adaptive_dllm.attention.mass import block_mass_torch

        torch.manual_seed(0)
        for H, Hkv, L, D, bs in ((4, 2, 100, 16, 32), (2, 2, 70, 32, 16), (2, 1, 96, 24, 32)):
            q, k = torch.randn(2, H, L, D) * 1.5, torch.randn(2, Hkv, L, D) * 1.5
            km = torch.ones(2, L, dtype=torch.bool)
            km[1, : L // 4] = False
            want = block_mass_torch(q, k, block_size=bs, key_mask=km)
            n_blocks = -(-L // bs)
            for method in ("onepass", "twopass"):
                got = block_mass_triton(q, k, block_size=bs, key_mask=km, method=method,
                                        scratch_bytes=2 * L * n_blocks * 4)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        print("ok")
    """)
    assert out.split() == ["ok"]
