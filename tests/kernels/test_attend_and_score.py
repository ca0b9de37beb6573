"""The fused build step: one attention forward that also writes the exact block mass.

CPU tests run the Triton kernel through Triton's interpreter (``triton_interpreter``); the GPU
tests repeat the comparisons at real sizes in bf16 with the tolerance rule of the style guide.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adaptive_dllm.attention.mass import block_mass_torch
from adaptive_dllm.attention.reference import reference_attention
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.sparsity import SparseConfig

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_kernel_matches_attention_and_mass_in_the_interpreter(triton_interpreter):
    """Output against the eager attention and masses against the torch oracle: GQA and MHA,
    left padding, lengths that are and are not a multiple of the block or the 128-row tile,
    every block size, a head dim that is not a power of two, (B, L, H, D)-major queries as the
    model makes them, and a scratch small enough to force several head chunks."""
    out = triton_interpreter("""
        import torch
        from adaptive_dllm.attention.reference import reference_attention
        from adaptive_dllm.kernels.attend_and_score import attend_and_score
        from adaptive_dllm.attention.mass import block_mass_torch

        torch.manual_seed(0)
        for H, Hkv, L, D, bs in ((4, 2, 100, 16, 32), (2, 2, 70, 32, 16), (3, 1, 300, 16, 64),
                                 (2, 1, 260, 16, 128), (2, 2, 256, 16, 64), (2, 1, 96, 24, 32)):
            q = (torch.randn(2, L, H, D) * 1.5).transpose(1, 2)
            k, v = torch.randn(2, Hkv, L, D) * 1.5, torch.randn(2, Hkv, L, D)
            km = torch.ones(2, L, dtype=torch.bool)
            km[1, : L // 4] = False
            for mask in (None, km):
                n_blocks = -(-L // bs)
                out, mass = attend_and_score(q, k, v, block_size=bs, key_mask=mask,
                                             scratch_bytes=2 * L * n_blocks * 4)
                ref = reference_attention(q, k, v, key_mask=mask, plan=None)
                torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
                want = block_mass_torch(q, k, block_size=bs, key_mask=mask)
                torch.testing.assert_close(mass, want, rtol=1e-4, atol=1e-5)
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_fused_build_step_gives_the_separate_plans_in_the_interpreter(triton_interpreter):
    """A whole sparse generation with the fused build step forced on (the interpreter stands in
    for the GPU) keeps exactly the blocks the separate scoring pass keeps, and says it was fused."""
    out = triton_interpreter("""
        import torch
        from adaptive_dllm.generation.api import generate
        from adaptive_dllm.models import ModelConfig, Transformer
        from adaptive_dllm.sparsity import SparseConfig
        from adaptive_dllm.attention.backends import FusedBuildMixin
        from adaptive_dllm.attention.reference import ReferenceBackend

        torch.manual_seed(0)
        cfg = ModelConfig(family="llada", vocab_size=40, hidden_size=32, n_layers=2, n_heads=4,
                          n_kv_heads=2, intermediate_size=64, max_seq_len=256, mask_id=39)
        model = Transformer(cfg).eval()
        ids = torch.randint(0, 39, (2, 80), generator=torch.Generator().manual_seed(1))

        class Hook:
            def __init__(self, sc):
                self.sc, self.sessions = sc, []
            def new_session(self, config, total_steps):
                s = self.sc.new_session(config, total_steps, gen_length=16)
                self.sessions.append(s)
                return s

        runs = {}
        for kind in ("separate", "fused"):
            hook = Hook(SparseConfig(select=0.4, skip=0.25, block_size=16, backend="reference",
                                     build_kernel=kind))
            if kind == "fused":
                ReferenceBackend.can_attend_and_score = lambda self, q: True
                ReferenceBackend.attend_and_score = FusedBuildMixin.attend_and_score
            out = generate(model, None, ids, steps=8, gen_length=16, block_length=16,
                           sparse=hook)
            runs[kind] = (out, hook.sessions[0])
        (sep, s_sep), (fus, s_fus) = runs["separate"], runs["fused"]
        assert s_sep.stats()["build_kernel"] == "separate", s_sep.stats()["build_kernel"]
        assert s_fus.stats()["build_kernel"] == "fused", s_fus.stats()["build_kernel"]
        for layer in range(cfg.n_layers):
            a, b = s_sep.plan_of(layer), s_fus.plan_of(layer)
            assert torch.equal(a.indices, b.indices) and torch.equal(a.counts, b.counts)
        assert torch.equal(sep.ids, fus.ids)
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_bad_shapes_and_block_sizes_are_one_line_errors():
    pytest.importorskip("triton")
    from adaptive_dllm.kernels.attend_and_score import attend_and_score

    q, k = torch.randn(1, 4, 64, 16), torch.randn(1, 3, 64, 16)
    with pytest.raises(AdllmError, match="H % Hkv == 0"):
        attend_and_score(q, k, k, block_size=32)
    k = torch.randn(1, 2, 64, 16)
    with pytest.raises(AdllmError, match="block_size=256 is not supported"):
        attend_and_score(q, k, k, block_size=256)


def test_build_kernel_is_validated_and_described():
    with pytest.raises(AdllmError, match="build_kernel='fast' is not valid"):
        SparseConfig(build_kernel="fast")
    assert SparseConfig().describe()["build_kernel"] == "fused"


def test_cpu_build_step_reports_the_separate_kernel():
    """Off CUDA the fused kernel does not apply; the stats say which build ran."""
    from adaptive_dllm.models import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(family="dream", vocab_size=40, hidden_size=32, n_layers=1, n_heads=4,
                      n_kv_heads=2, intermediate_size=64, max_seq_len=256, mask_id=39)
    model = Transformer(cfg).eval()
    session = SparseConfig(select=0.3, skip=0.5, block_size=16,
                           backend="reference").new_session(cfg, 2, gen_length=16)
    assert session.stats()["build_kernel"] is None  # nothing built yet
    session.begin_step(0, 2)
    model(torch.randint(0, 39, (1, 64)), attn=session)
    assert session.stats()["build_kernel"] == "separate" and session.plan_builds == 1


# ---------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("H,Hkv,L,bs", [(8, 8, 1000, 128), (14, 2, 777, 64), (4, 4, 513, 32)])
@pytest.mark.parametrize("padded", [False, True])
def test_gpu_fused_matches_reference_within_the_bf16_rule(H, Hkv, L, bs, padded):
    """Error of the fused output (bf16) vs the fp32 reference <= 2x that of dense bf16 SDPA;
    masses equal the torch oracle's."""
    from adaptive_dllm.kernels.attend_and_score import attend_and_score

    g = torch.Generator(device="cuda").manual_seed(L)
    q = torch.randn(2, L, H, 128, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    k, v = (torch.randn(2, Hkv, L, 128, device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    km = None
    if padded:
        km = torch.ones(2, L, dtype=torch.bool, device="cuda")
        km[1, : L // 4] = False
    out, mass = attend_and_score(q, k, v, block_size=bs, key_mask=km,
                                 scratch_bytes=3 * 2 * L * (-(-L // bs)) * 4)
    ref = reference_attention(q.float(), k.float(), v.float(), key_mask=km, plan=None)
    low = F.scaled_dot_product_attention(q, k, v, enable_gqa=H != Hkv,
                                         attn_mask=None if km is None else km[:, None, None, :])
    err = float((out.float() - ref).abs().max())
    budget = 2 * float((low.float() - ref).abs().max())
    assert 0 < budget < 0.05 and err <= budget, (err, budget)
    torch.testing.assert_close(mass, block_mass_torch(q, k, block_size=bs, key_mask=km),
                               rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@needs_cuda
def test_gpu_generation_uses_the_fused_build_and_reports_plan_time():
    from adaptive_dllm.generation.api import generate
    from adaptive_dllm.models import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(family="dream", vocab_size=64, hidden_size=256, n_layers=2, n_heads=4,
                      n_kv_heads=2, intermediate_size=512, max_seq_len=4096, mask_id=63)
    model = Transformer(cfg).eval().to("cuda", torch.bfloat16)
    ids = torch.randint(0, 63, (1, 1500), device="cuda",
                        generator=torch.Generator(device="cuda").manual_seed(0))
    stats = {}
    for kind in ("fused", "separate"):
        sc = SparseConfig(select=0.3, skip=0.25, block_size=128, backend="flex",
                          build_kernel=kind)
        out = generate(model, None, ids, steps=8, gen_length=32, sparse=sc)
        stats[kind] = out.stats["sparse"]
    assert stats["fused"]["build_kernel"] == "fused"
    assert stats["separate"]["build_kernel"] == "separate"
    for st in stats.values():
        assert st["realized_keep_ratio"] == st["allocator_keep_ratio"]
        assert st["time_plan_s"] > 0 and st["time_dense_s"] > 0
