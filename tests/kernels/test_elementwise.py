"""Triton RMSNorm / RoPE / SwiGLU kernels against the eager code, and when the model uses them."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.models.config import ModelConfig
from adaptive_dllm.models.transformer import (
    RMSNorm,
    Transformer,
    _use_fused,
    apply_rotary,
    fused_kernels,
    fused_kernels_enabled,
    rotary_tables,
)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _mostly_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype and shape and the same float32 arithmetic: float32 results agree to float32
    round-off (fused multiply-adds and the reduction order differ); bfloat16 results, rounded
    from those, are bit-identical almost everywhere and within one rounding elsewhere."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-5)
        assert (got == want).float().mean() > 0.99


def test_cpu_tensors_use_the_eager_code():
    x = torch.randn(2, 3)
    assert not _use_fused(x)
    with fused_kernels(False):
        assert not _use_fused(x)


def test_fused_gate_on_cuda_like_inputs():
    """The gate only reads ``is_cuda``, ``dtype`` and ``requires_grad``: stand-ins let a CPU run
    check every branch (float64 stays eager, autograd stays eager, the switch is honoured)."""
    from types import SimpleNamespace

    from adaptive_dllm.kernels.support import triton_available

    def cuda(dtype=torch.bfloat16, grad=False):
        return SimpleNamespace(is_cuda=True, dtype=dtype, requires_grad=grad)

    assert _use_fused(cuda(), cuda(torch.float32)) == triton_available()
    assert not _use_fused(cuda(), cuda(torch.float64))
    with torch.enable_grad():
        assert not _use_fused(cuda(), cuda(grad=True))
    with torch.no_grad():
        assert _use_fused(cuda(), cuda(grad=True)) == triton_available()
    with fused_kernels(False):
        assert not _use_fused(cuda())


def test_fused_switch_nests_restores_and_is_per_thread():
    import threading

    seen = []
    assert fused_kernels_enabled()
    with fused_kernels(False):
        with fused_kernels(True):
            assert fused_kernels_enabled()
        assert not fused_kernels_enabled()
        worker = threading.Thread(target=lambda: seen.append(fused_kernels_enabled()))
        worker.start()
        worker.join()
        with pytest.raises(RuntimeError), fused_kernels(True):
            raise RuntimeError("restored on errors too")
        assert not fused_kernels_enabled()
    assert fused_kernels_enabled() and seen == [True]  # another thread keeps the default


def test_rotary_rejects_tables_that_do_not_fit():
    """Checked before any launch (needs triton importable, not a GPU): a wrong table would make
    the kernel read the wrong memory where the eager code fails to broadcast."""
    pytest.importorskip("triton")
    from adaptive_dllm.kernels import elementwise as fused

    B, L, H, D = 2, 10, 3, 8
    x = torch.randn(B, L, H * D).view(B, L, H, D)
    good = rotary_tables(torch.arange(L)[None], D, 1e4)
    for cos, sin in (rotary_tables(torch.arange(L + 1)[None], D, 1e4),  # length
                     rotary_tables(torch.arange(L).expand(3, L), D, 1e4),  # batch 3 for 2
                     (good[0], good[1][..., :4])):  # sin narrower than cos
        with pytest.raises(ValueError, match="do not fit"):
            fused.rotary(x, cos, sin)


@pytest.mark.parametrize("d", [4096, 3584, 256])
@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.bfloat16, torch.bfloat16),
                                             (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("sliced", [False, True])
@pytest.mark.gpu
@needs_gpu
def test_rms_norm_matches_eager(d, x_dtype, w_dtype, sliced):
    from adaptive_dllm.kernels import elementwise as fused

    g = torch.Generator(device="cuda").manual_seed(d)
    x = torch.randn(2, 50, d, device="cuda", generator=g).mul(3).to(x_dtype)
    if sliced:
        x = x[:, 7:]  # the final norm runs on x[:, logits_from:]
    norm = RMSNorm(d, 1e-5).to("cuda", w_dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3, generator=g)
        with fused_kernels(False):
            want = norm(x)
        got = fused.rms_norm(x, norm.weight, 1e-5)
    _mostly_identical(got, want)


@pytest.mark.parametrize("B,L,h,D", [(2, 300, 4, 128), (1, 77, 8, 32), (3, 40, 2, 96), (1, 1, 1, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("per_row_positions", [False, True])
@pytest.mark.gpu
@needs_gpu
def test_rotary_matches_eager(B, L, h, D, dtype, per_row_positions):
    from adaptive_dllm.kernels import elementwise as fused

    g = torch.Generator(device="cuda").manual_seed(L * D)
    # as the model lays it out: a (B, L, h * D) projection viewed as (B, L, h, D)
    x = torch.randn(B, L, h * D, device="cuda", generator=g).to(dtype).view(B, L, h, D)
    positions = torch.arange(L, device="cuda").expand(B if per_row_positions else 1, L)
    if per_row_positions:  # left padding: rows start at different positions
        positions = (positions - torch.arange(B, device="cuda")[:, None] * 5).clamp_min(0)
    cos, sin = rotary_tables(positions, D, 500000.0)
    got = fused.rotary(x, cos, sin)
    want = apply_rotary(x.transpose(1, 2), cos, sin)
    assert got.is_contiguous()
    _mostly_identical(got, want)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(2, 77, 512), (1, 3, 18944), (5,)])
def test_silu_mul_matches_eager(dtype, shape):
    from adaptive_dllm.kernels import elementwise as fused

    g = torch.Generator(device="cuda").manual_seed(len(shape))
    gate = (torch.randn(*shape, device="cuda", generator=g) * 4).to(dtype)
    up = torch.randn(*shape, device="cuda", generator=g).to(dtype)
    _mostly_identical(fused.silu_mul(gate, up), torch.nn.functional.silu(gate) * up)


def _tiny_model(family: str) -> Transformer:
    kv = 2 if family == "dream" else 4
    config = ModelConfig(family=family, vocab_size=96, hidden_size=128, n_heads=4, n_kv_heads=kv,
                         intermediate_size=256, n_layers=2, max_seq_len=512, mask_id=95, eos_id=94,
                         pad_id=94, qkv_bias=family == "dream")
    torch.manual_seed(0)
    return Transformer(config).to("cuda", torch.bfloat16).eval()


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.gpu
@needs_gpu
def test_model_takes_the_fused_path_and_matches_eager(family, monkeypatch):
    from adaptive_dllm.kernels import elementwise as fused

    calls = {"rotary": 0, "rms_norm": 0, "silu_mul": 0}
    for name in calls:
        original = getattr(fused, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(fused, name, counted)
    model = _tiny_model(family)
    ids = torch.randint(0, 94, (2, 200), device="cuda")
    mask = torch.ones(2, 200, dtype=torch.bool, device="cuda")
    mask[1, :30] = False
    with torch.no_grad():
        got = model(ids, attention_mask=mask)
        assert calls == {"rotary": 2 * 2, "rms_norm": 2 * 2 + 1, "silu_mul": 2}
        with fused_kernels(False):
            want = model(ids, attention_mask=mask)
    torch.testing.assert_close(got.float(), want.float(), rtol=0.02, atol=0.02)
    # with gradients (training, HeadIG) the eager code runs
    calls.update(rotary=0, rms_norm=0, silu_mul=0)
    model.requires_grad_(True)
    model(ids).float().sum().backward()
    assert calls == {"rotary": 0, "rms_norm": 0, "silu_mul": 0}


def test_kernels_match_eager_in_the_triton_interpreter(triton_interpreter):
    """The three kernels on the CPU (float32): strided and offset inputs that the GPU tests do
    not build: a head slice of a packed QKV projection, and x[:, k:] of a batch of one."""
    out = triton_interpreter("""
        import torch
        from adaptive_dllm.kernels import elementwise as fused
        from adaptive_dllm.models.transformer import RMSNorm, apply_rotary, rotary_tables

        torch.manual_seed(0)
        B, L, H, D = 2, 37, 3, 96  # head dim not a power of two
        x = torch.randn(B, L, 3 * H * D)[..., : H * D].view(B, L, H, D)  # row stride 3 H D
        pos = (torch.arange(L).expand(B, L) - torch.arange(B)[:, None] * 5).clamp_min(0)
        cos, sin = rotary_tables(pos, D, 5e5)
        got = fused.rotary(x, cos, sin)
        assert got.is_contiguous() and got.shape == (B, H, L, D)
        torch.testing.assert_close(got, apply_rotary(x.transpose(1, 2), cos, sin), rtol=1e-6, atol=1e-6)
        for B in (1, 2):
            xs = torch.randn(B, 50, 3584)[:, 7:]  # B = 1: a view with a storage offset
            norm = RMSNorm(3584, 1e-5)
            with torch.no_grad():
                norm.weight.normal_(1.0, 0.3)
                torch.testing.assert_close(fused.rms_norm(xs, norm.weight, 1e-5), norm(xs),
                                           rtol=1e-5, atol=1e-6)
        g, u = torch.randn(5, 77) * 4, torch.randn(5, 77)
        torch.testing.assert_close(fused.silu_mul(g, u), torch.nn.functional.silu(g) * u,
                                   rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    assert out.split() == ["ok"]
