"""Cached-step kernel: the eager oracle against dense attention, the Triton kernel (CPU
interpreter) against the oracle, one-line errors. GPU tolerance tests skip without a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.decode_sparse import combine_splits, decode_reference


def _dense(q, k, v, key_mask=None):
    G = q.shape[1] // k.shape[1]
    kf, vf = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = q @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(s, -1) @ vf


def _all_blocks(B, Hkv, Lk, bs):
    n = -(-Lk // bs)
    idx = torch.arange(n, dtype=torch.int32).expand(B, Hkv, n).contiguous()
    return idx, torch.full((B, Hkv), n, dtype=torch.int32)


@pytest.mark.parametrize(("H", "Hkv", "W", "Lk", "D", "bs"),
                         [(4, 4, 8, 100, 16, 32), (7, 1, 5, 257, 24, 64), (8, 2, 32, 64, 32, 16)])
def test_reference_with_every_block_kept_is_dense_attention(H, Hkv, W, Lk, D, bs):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, H, W, D), torch.randn(2, Hkv, Lk, D), torch.randn(2, Hkv, Lk, D)
    km = torch.ones(2, Lk, dtype=torch.bool)
    km[1, :Lk // 3] = False  # left padding in row 1
    idx, cnt = _all_blocks(2, Hkv, Lk, bs)
    got = decode_reference(q, k, v, idx, cnt, block_size=bs, key_mask=km)
    torch.testing.assert_close(got, _dense(q, k, v, km), rtol=1e-5, atol=1e-5)


def test_reference_reads_only_kept_blocks():
    """Changing K/V outside the kept blocks changes nothing; inside, it does."""
    torch.manual_seed(1)
    B, H, Hkv, W, Lk, D, bs = 1, 4, 2, 4, 128, 16, 32
    q, k, v = torch.randn(B, H, W, D), torch.randn(B, Hkv, Lk, D), torch.randn(B, Hkv, Lk, D)
    idx = torch.tensor([[[0, 2, -1], [1, 2, 3]]], dtype=torch.int32)
    cnt = torch.tensor([[2, 3]], dtype=torch.int32)
    base = decode_reference(q, k, v, idx, cnt, block_size=bs)
    k2, v2 = k.clone(), v.clone()
    k2[0, 0, 32:64] += 5  # head 0 does not keep block 1
    v2[0, 1, 0:32] += 5  # head 1 does not keep block 0
    torch.testing.assert_close(decode_reference(q, k2, v2, idx, cnt, block_size=bs), base)
    v2[0, 0, 64:96] += 5  # head 0 keeps block 2
    assert not torch.allclose(decode_reference(q, k2, v2, idx, cnt, block_size=bs), base)
    # Equal to dense attention over the kept keys only.
    keys = torch.cat([k[:, :1, 0:32], k[:, :1, 64:96]], dim=2)
    vals = torch.cat([v[:, :1, 0:32], v[:, :1, 64:96]], dim=2)
    torch.testing.assert_close(base[:, :2], _dense(q[:, :2], keys, vals), rtol=1e-5, atol=1e-5)


def test_combine_of_one_split_is_identity_and_empty_splits_weigh_nothing():
    part = torch.randn(1, 1, 2, 3, 4)
    stat = torch.zeros(1, 1, 2, 3, 2)
    stat[..., 0, :, 1] = 1.0
    stat[..., 1, :, 0] = float("-inf")  # split 1 saw no key
    torch.testing.assert_close(combine_splits(part, stat), part[:, :, 0])


def test_bad_shapes_are_one_line_errors():
    q, k = torch.zeros(1, 4, 2, 8), torch.zeros(1, 2, 64, 8)
    idx, cnt = _all_blocks(1, 2, 64, 32)
    with pytest.raises(AdllmError, match="indices must be"):
        decode_reference(q, k, k, idx[:, :1], cnt, block_size=32)
    with pytest.raises(AdllmError, match="key_mask must be"):
        decode_reference(q, k, k, idx, cnt, block_size=32, key_mask=torch.ones(1, 63).bool())
    with pytest.raises(AdllmError, match="does not fit"):
        decode_reference(torch.zeros(1, 3, 2, 8), k, k, idx, cnt, block_size=32)


def test_kernel_matches_reference_in_the_interpreter(triton_interpreter):
    """MHA and GQA (7 query heads per KV head), uneven kept lists per head (one block, all
    blocks, none), left padding, a cache length that is not a multiple of the block, a head dim
    that is not a power of two, more query rows than one tile, 1 and several splits."""
    out = triton_interpreter("""
        import torch
        from adaptive_dllm.kernels.decode_sparse import decode_reference, decode_sparse

        torch.manual_seed(0)
        for H, Hkv, W, Lk, D, bs in ((4, 4, 8, 100, 16, 32), (7, 1, 5, 257, 24, 64),
                                     (8, 2, 40, 96, 32, 16), (2, 1, 3, 700, 16, 16)):
            B = 2
            n = -(-Lk // bs)
            q = torch.randn(B, W, H, D).transpose(1, 2)  # (B, H, W, D), model-made strides
            k, v = torch.randn(B, Hkv, Lk, D), torch.randn(B, Hkv, Lk, D)
            km = torch.ones(B, Lk, dtype=torch.bool)
            km[1, : Lk // 4] = False
            cnt = torch.randint(0, n + 1, (B, Hkv), dtype=torch.int32)
            cnt[0, 0], cnt[-1, -1] = 1, n
            idx = torch.full((B, Hkv, n), -1, dtype=torch.int32)
            for b in range(B):
                for h in range(Hkv):
                    c = int(cnt[b, h])
                    idx[b, h, :c] = torch.randperm(n)[:c].sort().values.int()
            want = decode_reference(q, k, v, idx, cnt, block_size=bs, key_mask=km)
            for splits in (1, 3, 20):
                got = decode_sparse(q, k, v, idx, cnt, block_size=bs, key_mask=km,
                                    splits=splits)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            got = decode_sparse(q, k, v, idx, cnt, block_size=bs)
            torch.testing.assert_close(
                got, decode_reference(q, k, v, idx, cnt, block_size=bs), rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_combine_kernel_matches_combine_splits_in_the_interpreter(triton_interpreter):
    """The Triton combine merges its partials 16 at a time: 1, 16, 17 and 40 splits, splits that
    saw no key, a row that no split saw, a head dim that is not a power of two."""
    out = triton_interpreter("""
        import torch
        from adaptive_dllm.kernels.decode_sparse import _kernels, combine_splits

        torch.manual_seed(0)
        _, combine = _kernels()
        B, Hkv, M, D = 2, 3, 5, 24
        for S in (1, 16, 17, 40):
            part = torch.randn(B, Hkv, S, M, D)
            stat = torch.stack([torch.randn(B, Hkv, S, M) * 4,
                                torch.rand(B, Hkv, S, M) + 0.5], dim=-1)
            empty = torch.rand(B, Hkv, S, M) < 0.3
            stat[..., 0][empty], stat[..., 1][empty] = float("-inf"), 0.0
            stat[0, 1, :, 2, 0], stat[0, 1, :, 2, 1] = float("-inf"), 0.0  # no split saw it
            got = torch.empty(B * Hkv * M, D)
            combine[(B * Hkv * M,)](part, stat, got, S, M, D, BLOCK_S=16, BLOCK_D=32)
            want = combine_splits(part, stat)
            torch.testing.assert_close(got.view(B, Hkv, M, D), want, rtol=1e-5, atol=1e-5)
            assert bool((got.view(B, Hkv, M, D)[0, 1, 2] == 0).all())
        print("ok")
    """)
    assert out.split() == ["ok"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_bf16_on_gpu_matches_reference():
    pytest.importorskip("triton")
    from adaptive_dllm.kernels.decode_sparse import decode_sparse

    torch.manual_seed(0)
    B, H, Hkv, W, Lk, D, bs = 1, 28, 4, 32, 8192, 128, 128
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(B, H, W, D, device=dev, dtype=dt)
    k, v = (torch.randn(B, Hkv, Lk, D, device=dev, dtype=dt) for _ in range(2))
    n = Lk // bs
    idx = torch.stack([torch.randperm(n, device=dev)[: n // 3].sort().values
                       for _ in range(B * Hkv)]).view(B, Hkv, -1).int()
    cnt = torch.full((B, Hkv), n // 3, dtype=torch.int32, device=dev)
    got = decode_sparse(q, k, v, idx, cnt, block_size=bs)
    want = decode_reference(q.float(), k.float(), v.float(), idx, cnt, block_size=bs)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def test_kernel_rejects_offsets_past_32_bits(monkeypatch):
    pytest.importorskip("triton")
    from adaptive_dllm.kernels import decode_sparse as ds

    q = torch.zeros(1, 1, 1, 16)
    k = torch.zeros(1, 1, 16, 16).expand(1, 1, 16, 16)
    idx, cnt = _all_blocks(1, 1, 16, 16)
    monkeypatch.setattr(torch.Tensor, "numel", lambda self: 2 ** 31)
    with pytest.raises(AdllmError, match="exceed 2\\^31"):
        ds.decode_sparse(q, k, k, idx, cnt, block_size=16)
