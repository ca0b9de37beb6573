"""The ``triton`` block-sparse backend against the eager reference.

CPU: the kernel runs through Triton's interpreter (``triton_interpreter``). The GPU tolerance tests
(bf16, compiled kernel) are shared with flex in ``test_flex.py``.
"""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.attention.api import attend, available_backends
from adaptive_dllm.attention.plan import build_plan
from adaptive_dllm.errors import AdllmError


def test_kernel_matches_reference_in_the_interpreter(triton_interpreter):
    """MHA and GQA, per-KV-head and per-query-head plans, uneven counts per unit (one unit keeps
    one block, another all), left padding, lengths that are and are not a multiple of the block,
    a head dim that is not a power of two, a batch-1 plan run on a batch of 2, (B, L, H, D)-major
    queries and keys as the model makes them; pointer loads and TMA descriptors."""
    out = triton_interpreter("""
        import torch
        from adaptive_dllm.attention.api import attend
        from adaptive_dllm.attention.triton import TritonBackend, TritonOptions
        from adaptive_dllm.attention.reference import reference_attention
        from adaptive_dllm.attention.plan import build_plan
        from adaptive_dllm.attention.mass import block_mass_torch, reduce_units

        torch.manual_seed(0)
        cases = ((4, 2, 100, 16, 32, "kv"), (4, 2, 100, 16, 32, "query"), (2, 2, 70, 32, 16, "kv"),
                 (3, 1, 300, 24, 64, "kv"), (2, 1, 256, 16, 128, "kv"))
        for H, Hkv, L, D, bs, units in cases:
            for B, padded, plan_batch in ((1, False, 1), (2, True, 2), (2, False, 1)):
                q = (torch.randn(B, L, H, D) * 1.5).transpose(1, 2)
                k = (torch.randn(B, L, Hkv, D) * 1.5).transpose(1, 2)
                v = torch.randn(B, Hkv, L, D)
                km = None
                if padded:
                    km = torch.ones(B, L, dtype=torch.bool)
                    km[1, : L // 4] = False
                s = block_mass_torch(q[:plan_batch], k[:plan_batch], block_size=bs,
                                     key_mask=None if km is None else km[:plan_batch])
                s = reduce_units(s, Hkv, units)
                U, N = s.shape[1], s.shape[-1]
                counts = torch.randint(1, N + 1, (U,), generator=torch.Generator().manual_seed(L))
                counts[0], counts[-1] = 1, N
                plan = build_plan(s, counts, None, layer=0, block_size=bs, seq_len=L,
                                  prompt_blocks=N, group=H // U, key_mask=km)
                want = reference_attention(q, k, v, key_mask=km, plan=plan)
                for use_tma in (False, True):  # pointer loads, and TMA descriptors
                    backend = TritonBackend(TritonOptions(use_tma=use_tma))
                    got = attend(q, k, v, key_mask=km, plan=plan, backend=backend)
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_registered_and_needs_a_fitting_plan(monkeypatch):
    pytest.importorskip("triton")
    # Past the device check on the CPU: the plan checks come before any launch. (Setting
    # TRITON_INTERPRET here instead would make the kernels interpreted for the whole process.)
    monkeypatch.setattr("adaptive_dllm.attention.triton.triton_device_problem", lambda device: None)
    assert "triton" in available_backends()
    q = k = v = torch.randn(1, 2, 64, 16)
    with pytest.raises(AdllmError, match="needs a sparse plan"):
        attend(q, k, v, backend="triton")
    scores = torch.rand(1, 2, 2, 2)
    plan = build_plan(scores, torch.tensor([1, 2]), None, layer=0, block_size=32, seq_len=64,
                      prompt_blocks=2, group=1)
    with pytest.raises(AdllmError, match="length 64 and batch 1 cannot run on length 32"):
        attend(q[:, :, :32], k[:, :, :32], v[:, :, :32], plan=plan, backend="triton")
    with pytest.raises(AdllmError, match="plan for 2 query heads cannot run"):
        attend(torch.randn(1, 4, 64, 16), k, v, plan=plan, backend="triton")


def test_cpu_tensors_get_a_one_line_error(monkeypatch):
    """Without a GPU (and outside Triton's interpreter) the backend says what to use instead,
    and a sparse generation fails before its first step, not at its first sparse one."""
    from adaptive_dllm.models import ModelConfig, Transformer
    from adaptive_dllm.sparsity import SparseConfig

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = k = v = torch.randn(1, 2, 64, 16)
    plan = build_plan(torch.rand(1, 2, 2, 2), torch.tensor([1, 2]), None, layer=0, block_size=32,
                      seq_len=64, prompt_blocks=2, group=1)
    with pytest.raises(AdllmError, match="runs on a CUDA GPU, not on cpu; use backend 'reference'"):
        attend(q, k, v, plan=plan, backend="triton")
    cfg = ModelConfig(family="dream", vocab_size=40, hidden_size=32, n_layers=1, n_heads=4,
                      n_kv_heads=2, intermediate_size=64, max_seq_len=256, mask_id=39)
    session = SparseConfig(select=0.3, block_size=32, backend="triton").new_session(cfg, 4)
    session.begin_step(0, 4)
    with pytest.raises(AdllmError, match="runs on a CUDA GPU"):
        Transformer(cfg).eval()(torch.randint(0, 39, (1, 64)), attn=session)


def test_offsets_past_32_bits_are_one_line_errors():
    pytest.importorskip("triton")
    from adaptive_dllm.kernels.support import check_offsets

    row = 3 * 32 * 128  # packed q/k/v of a 32-head, head-dim-128 model
    base = torch.empty(row + 128)
    packed = base.as_strided((1, 1, 2, 128), (0, 0, row, 1))
    check_offsets(150_000, packed)  # 1.8e9 < 2^31
    with pytest.raises(AdllmError, match="200000 tokens is too long for the 32-bit offsets"):
        check_offsets(200_000, packed)
    with pytest.raises(AdllmError, match="use backend 'flex'"):
        check_offsets(1000, packed, extra=2**31)


def test_a_plan_row_without_blocks_is_a_one_line_error():
    pytest.importorskip("triton")
    from adaptive_dllm.attention.triton import TritonBackend

    plan = build_plan(torch.rand(1, 2, 2, 2), torch.tensor([0, 2]), None, layer=3, block_size=32,
                      seq_len=64, prompt_blocks=2, group=1)
    with pytest.raises(AdllmError, match=r"plan of layer 3 keeps no block for some unit \(counts"):
        TritonBackend().prepare(plan, 2)
