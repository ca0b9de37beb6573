"""The flex backend against the eager reference (CPU: eager flex; GPU: the compiled kernel).

The GPU tolerance tests also run the ``triton`` backend (its CPU tests, through Triton's
interpreter, are in ``test_triton.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adaptive_dllm.attention import flex
from adaptive_dllm.attention.api import attend
from adaptive_dllm.attention.mass import block_mass
from adaptive_dllm.attention.plan import build_plan
from adaptive_dllm.attention.reference import reference_attention
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.kernels.support import BLOCK_SIZES

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(B, H, Hkv, L, D, *, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(B, h, L, D, generator=g, device=device, dtype=dtype)
            for h in (H, Hkv, Hkv)]


def _plan(q, k, bs, select=0.3, key_mask=None, region_gen=None, units="kv"):
    B, H, L, _ = q.shape
    scores = block_mass(q, k, block_size=bs, key_mask=key_mask, units=units)
    U, N = scores.shape[1], scores.shape[-1]
    n_p = N if region_gen is None else max(1, N - region_gen)
    kp = torch.full((U,), max(1, round(select * n_p)))
    kp[0] = n_p  # one unit keeps everything, one keeps one block
    kp[-1] = 1
    kg = None if n_p == N else torch.full((U,), max(1, round(select * (N - n_p))))
    return build_plan(scores, kp, kg, layer=0, block_size=bs, seq_len=L, prompt_blocks=n_p,
                      group=H // U, key_mask=key_mask)


def _padding(B, L, device="cpu"):
    key_mask = torch.ones(B, L, dtype=torch.bool, device=device)
    key_mask[-1, :L // 3] = False  # left padding over several blocks, one partial block
    return key_mask


@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2)])
@pytest.mark.parametrize("bs", [32, 64])
@pytest.mark.parametrize("padded", [False, True])
def test_eager_flex_matches_reference(H, Hkv, bs, padded):
    q, k, v = _inputs(2, H, Hkv, 150, 16)
    km = _padding(2, 150) if padded else None
    plan = _plan(q, k, bs, key_mask=km, region_gen=1)
    out = attend(q, k, v, key_mask=km, plan=plan, backend="flex")
    ref = reference_attention(q, k, v, key_mask=km, plan=plan)
    rows = slice(None) if km is None else km[:, None, :, None].expand_as(ref)
    torch.testing.assert_close(out[rows], ref[rows], rtol=1e-5, atol=1e-5)
    # and sparse really is sparse: it differs from dense attention
    assert not torch.allclose(ref, reference_attention(q, k, v, key_mask=km), atol=1e-3)


def test_no_kv_repetition(monkeypatch):
    import torch.nn.attention.flex_attention as fa

    seen = []
    real = fa.flex_attention

    def spy(q, k, v, **kw):
        seen.append((tuple(k.shape), tuple(v.shape), kw.get("enable_gqa")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(fa, "flex_attention", spy)
    q, k, v = _inputs(1, 6, 2, 64, 16)
    attend(q, k, v, plan=_plan(q, k, 32), backend="flex")
    assert seen == [((1, 2, 64, 16), (1, 2, 64, 16), True)]


def test_key_mask_mod_left_padding_and_general():
    valid = torch.tensor([[False, False, True, True, True], [True, True, True, True, True],
                          [False, False, False, False, False]])
    general = torch.tensor([[True, False, True, True, False]] * 3)
    kv = torch.arange(5)
    for mask in (valid, general):
        mod = flex._key_mask_mod(mask)
        for b in range(3):
            got = mod(torch.tensor(b), torch.tensor(0), torch.tensor(0), kv)
            assert torch.equal(got, mask[b])


def test_block_mask_is_prepared_once_per_plan(monkeypatch, fixture_model):
    """A sparse generation on flex builds each plan's BlockMask once, when the plan is built,
    and every sparse step reuses it (the plan itself holds no backend data)."""
    from adaptive_dllm.generation.api import generate
    from adaptive_dllm.sparsity import SparseConfig

    built = []
    real = flex.block_mask
    monkeypatch.setattr(flex, "block_mask", lambda plan, n: built.append(plan) or real(plan, n))
    model = fixture_model("dream_tiny")
    cfg = SparseConfig(select=0.5, skip=0.25, block_size=32, backend="flex")
    out = generate(model, None, list(range(1, 57)), sparse=cfg, steps=8, gen_length=16)
    st = out.stats.sparse
    assert st.sparse_steps == 6 and st.plan_builds == model.config.n_layers
    assert len(built) == st.plan_builds and len({id(p) for p in built}) == st.plan_builds


def test_flex_needs_a_plan_of_the_right_shape():
    q, k, v = _inputs(1, 4, 2, 96, 16)
    with pytest.raises(AdllmError):
        attend(q, k, v, backend="flex")
    plan = _plan(q, k, 32)
    with pytest.raises(AdllmError):
        attend(q[:, :, :64], k[:, :, :64], v[:, :, :64], plan=plan, backend="flex")


# ---------------------------------------------------------------------------------------------
# GPU: the compiled kernel, bf16, tolerance rule of the style guide


def _max_err(a, b):
    return float((a.float() - b.float()).abs().max())


def _masked_bf16_attention(q, k, v, plan, km):
    """The same sparse attention computed by a dense bf16 kernel (SDPA, memory-efficient backend)
    with the plan expanded to an element mask: the low-precision baseline of the rule."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, L, _ = q.shape
    blocks = plan.block_mask().repeat_interleave(H // plan.n_units, dim=1)
    bs = plan.block_size
    elem = blocks.repeat_interleave(bs, 2).repeat_interleave(bs, 3)[..., :L, :L]
    if km is not None:
        elem = elem & km[:, None, None, :]
    g = H // k.shape[1]
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1),
                                              v.repeat_interleave(g, 1), attn_mask=elem)


def _check_tolerance(q, k, v, plan, km=None, backend="flex"):
    """Style-guide rule: error of the sparse backend (bf16) vs the fp32 reference <= 2x the error
    of the same masked attention computed by a dense bf16 kernel vs that reference."""
    out = attend(q, k, v, key_mask=km, plan=plan, backend=backend)
    ref = reference_attention(q.float(), k.float(), v.float(), key_mask=km, plan=plan)
    low = _masked_bf16_attention(q, k, v, plan, km)
    if km is not None:  # padded query rows are not compared
        rows = km[:, None, :, None]
        out, ref, low = (torch.where(rows, t.float(), 0.0) for t in (out, ref, low))
    budget = 2 * _max_err(low, ref)
    assert 0 < budget < 0.05
    assert _max_err(out, ref) <= budget, (_max_err(out, ref), budget)


@pytest.mark.parametrize("H,Hkv", [(8, 8), (8, 2)])
@pytest.mark.parametrize("bs", BLOCK_SIZES)  # every block size the kernels run
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("backend", ["flex", "triton"])
@pytest.mark.gpu
@needs_cuda
def test_gpu_flex_matches_reference(H, Hkv, bs, padded, backend):
    q, k, v = _inputs(2, H, Hkv, 1000, 128, device="cuda", dtype=torch.bfloat16)
    km = _padding(2, 1000, "cuda") if padded else None
    _check_tolerance(q, k, v, _plan(q, k, bs, key_mask=km, region_gen=1), km, backend)


@pytest.mark.parametrize("name", ["llada_tiny", "dream_tiny"])
@pytest.mark.parametrize("bs", [16, 64, 128])
@pytest.mark.parametrize("backend", ["flex", "triton"])
@pytest.mark.gpu
@needs_cuda
def test_gpu_flex_matches_reference_on_fixture_models(fixture_model, name, bs, backend):
    model = fixture_model(name)
    captured = {}

    def spy(layer, q, k, v, km):
        captured[layer] = (q, k, v)
        return attend(q, k, v, key_mask=km)

    ids = torch.randint(0, 120, (1, 700), generator=torch.Generator().manual_seed(1))
    model(ids, attn=spy)
    for q, k, v in captured.values():
        q, k, v = (t.to("cuda", torch.bfloat16) for t in (q, k, v))
        _check_tolerance(q, k, v, _plan(q, k, bs, region_gen=1), backend=backend)


@pytest.mark.gpu
@needs_cuda
def test_gpu_new_lengths_do_not_recompile():
    from torch._dynamo.utils import counters

    q, k, v = _inputs(1, 4, 2, 700, 64, device="cuda", dtype=torch.bfloat16)
    attend(q, k, v, plan=_plan(q, k, 128), backend="flex")
    graphs = counters["stats"]["unique_graphs"]
    for L in (1000, 1111, 2048, 3000, 5000):
        q, k, v = _inputs(1, 4, 2, L, 64, device="cuda", dtype=torch.bfloat16, seed=L)
        attend(q, k, v, plan=_plan(q, k, 128), backend="flex")
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.gpu
@needs_cuda
def test_gpu_more_kernel_signatures_than_dynamos_default_limit():
    """A process that meets more than 8 kernel signatures (head dims, GQA, block sizes) must not
    hit dynamo's recompile limit (an error under fullgraph): it did before the limit was scoped.
    Also the regression test of the FX graph cache bug: with the cache on, the block-size-64 MHA
    call after the block-size-32 one got the wrong compiled graph (error ~1.4 instead of 0.004)."""
    for D in (16, 32, 64):
        for Hkv in (4, 2):
            for bs in (32, 64):
                q, k, v = _inputs(1, 4, Hkv, 256, D, device="cuda", dtype=torch.bfloat16, seed=D)
                plan = _plan(q, k, bs)
                out = attend(q, k, v, plan=plan, backend="flex")
                ref = reference_attention(q.float(), k.float(), v.float(), plan=plan)
                assert _max_err(out, ref) < 0.05


def test_backend_options_must_cover_every_block_size():
    """Both backends' per-block-size options name the missing block size in one line."""
    from adaptive_dllm.attention.triton import TritonOptions

    tiles = {bs: t for bs, t in flex.FLEX_TILES.items() if bs != 32}
    with pytest.raises(AdllmError, match=r"^FlexOptions.tiles lacks block sizes \[32\]; give "):
        flex.FlexOptions(tiles=tiles)
    with pytest.raises(AdllmError, match=r"^TritonOptions.launch lacks block sizes \[16, 32, 64\]"):
        TritonOptions(launch={128: TritonOptions().launch[128]})
    assert flex.FlexOptions().tiles is flex.FLEX_TILES
