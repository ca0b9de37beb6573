"""The Triton block-mass kernel against the chunked torch oracle (GPU only)."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.attention.mass import block_mass_torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("H,Hkv,L,D,bs", [(8, 8, 1000, 128, 128), (8, 2, 777, 128, 64),
                                          (4, 2, 300, 16, 32), (4, 4, 513, 64, 128)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("method", ["onepass", "twopass"])
def test_triton_mass_matches_torch(H, Hkv, L, D, bs, padded, method):
    from adaptive_dllm.kernels.block_mass import block_mass_triton

    g = torch.Generator(device="cuda").manual_seed(L)
    q = torch.randn(2, H, L, D, device="cuda", dtype=torch.bfloat16, generator=g) * 1.5
    k = torch.randn(2, Hkv, L, D, device="cuda", dtype=torch.bfloat16, generator=g) * 1.5
    km = None
    if padded:
        km = torch.ones(2, L, dtype=torch.bool, device="cuda")
        km[1, :L // 4] = False
    # a small scratch forces several head chunks in the one-pass kernel
    got = block_mass_triton(q, k, block_size=bs, key_mask=km, method=method,
                            scratch_bytes=3 * 2 * L * (-(-L // bs)) * 4)
    ref = block_mass_torch(q, k, block_size=bs, key_mask=km)
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)
    # strided (B, L, H, D)-major queries, as the model produces them
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(block_mass_triton(qt, k, block_size=bs, key_mask=km,
                                                 method=method), got)
