"""The ``gather`` backend (CPU block-sparse attention) against the eager reference.

Plans, inputs and padding come from ``test_flex.py``'s helpers (the same random plans the flex
tests use: one unit keeps every block, one keeps a single block, so rows are ``-1``-padded).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from test_flex import _inputs, _padding, _plan

import adaptive_dllm as ad
from adaptive_dllm.attention.api import attend, available_backends, get_backend
from adaptive_dllm.attention.gather import GatherBackend, GatherOptions
from adaptive_dllm.attention.plan import build_plan
from adaptive_dllm.attention.reference import reference_attention
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.sparsity import SparseConfig


def _check(q, k, v, plan, km=None, backend="gather"):
    out = attend(q, k, v, key_mask=km, plan=plan, backend=backend)
    ref = reference_attention(q, k, v, key_mask=km, plan=plan)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    return out


@pytest.mark.parametrize("units", ["kv", "query"])
@pytest.mark.parametrize("bs", [16, 32, 64])
@pytest.mark.parametrize("region_gen", [None, 1])
def test_matches_reference(units, bs, region_gen):
    """GQA with KV-head and query-head units, joint and separate plans, L = 150 not a multiple
    of any block, batch 2 whose second sample is left-padded over several blocks."""
    q, k, v = _inputs(2, 4, 2, 150, 16)
    km = _padding(2, 150)
    plan = _plan(q, k, bs, key_mask=km, region_gen=region_gen, units=units)
    assert plan.group == (2 if units == "kv" else 1)
    assert (plan.indices == -1).any()  # kmax padding is exercised
    out = _check(q, k, v, plan, km)
    # sparse really is sparse: the plan changes the result
    assert not torch.allclose(out, reference_attention(q, k, v, key_mask=km), atol=1e-3)


@pytest.mark.parametrize("H,Hkv", [(4, 4), (6, 2), (3, 1)])
def test_head_layouts_and_a_batch_one_plan(H, Hkv):
    """MHA, GQA, MQA; a plan built for batch 1 serves a batch of 2 (no key mask)."""
    q, k, v = _inputs(2, H, Hkv, 100, 8, seed=H)
    for units in ("kv", "query"):
        plan = _plan(q[:1], k[:1], 32, units=units)
        assert plan.batch == 1
        _check(q, k, v, plan)


def test_select_one_equals_dense_sdpa():
    q, k, v = _inputs(2, 4, 2, 150, 16)
    km = _padding(2, 150)
    plan = _plan(q, k, 32, select=1.0, key_mask=km)
    assert plan.keep_ratio() < 1.0  # the helper forces one unit to a single block
    scores = torch.rand(2, 2, 5, 5)
    full = build_plan(scores, torch.full((2,), 5), None, layer=0, block_size=32, seq_len=150,
                      prompt_blocks=5, group=2, key_mask=km)
    assert full.keep_ratio() == 1.0
    out = attend(q, k, v, key_mask=km, plan=full, backend="gather")
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=km[:, None, None, :],
                                           enable_gqa=True)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_dense_call_is_sdpa():
    q, k, v = _inputs(2, 4, 2, 70, 16)
    km = _padding(2, 70)
    out = attend(q, k, v, key_mask=km, backend="gather")
    torch.testing.assert_close(out, attend(q, k, v, key_mask=km, backend="sdpa"))


def test_chunked_equals_unchunked_and_prepared_is_reused():
    """A tiny chunk bound (one query block at a time) gives the same output as one chunk."""
    q, k, v = _inputs(2, 4, 2, 200, 16, seed=3)
    km = _padding(2, 200)
    plan = _plan(q, k, 16, key_mask=km, region_gen=2)
    one_chunk = GatherBackend(GatherOptions(max_chunk_elements=2**30))
    per_block = GatherBackend(GatherOptions(max_chunk_elements=1))
    prepared = per_block.prepare(plan, 4)
    a = one_chunk.run(q, k, v, key_mask=km, plan=plan)
    b = per_block.run(q, k, v, key_mask=km, plan=plan, prepared=prepared)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a, reference_attention(q, k, v, key_mask=km, plan=plan),
                               rtol=1e-5, atol=1e-5)


def test_low_precision_inputs_come_back_in_their_dtype():
    q, k, v = (t.to(torch.bfloat16) for t in _inputs(1, 4, 2, 96, 16))
    plan = _plan(q.float(), k.float(), 32)
    out = attend(q, k, v, plan=plan, backend="gather")
    ref = reference_attention(q, k, v, plan=plan)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_registered_supports_any_device_and_bad_inputs_are_one_line_errors():
    assert "gather" in available_backends()
    backend = get_backend("gather")
    assert backend.supports(device_type="cpu", head_dim=256, block_size=8) is None
    assert backend.supports(device_type="cuda", head_dim=64, block_size=128) is None
    assert "block_size=24" in backend.supports(device_type="cpu", head_dim=64, block_size=24)
    q, k, v = _inputs(1, 4, 2, 96, 16)
    plan = _plan(q, k, 32)
    with pytest.raises(AdllmError, match="length 96"):
        attend(q[:, :, :64], k[:, :, :64], v[:, :, :64], plan=plan, backend="gather")
    with pytest.raises(AdllmError, match="4 query heads"):
        # one unit of 4 query heads over 2 KV heads: its heads do not share one KV head
        attend(q, k, v, plan=replace(plan, group=4, indices=plan.indices[:, :1]),
               backend="gather")
    with pytest.raises(AdllmError, match="max_chunk_elements"):
        GatherOptions(max_chunk_elements=0)


def test_config_and_cli_accept_gather():
    from adaptive_dllm.sparsity.config import BackendName

    assert "gather" in BackendName.__args__
    SparseConfig(block_size=8, backend="gather")  # any size the reference takes
    with pytest.raises(AdllmError):
        SparseConfig(block_size=8, backend="flex")


@pytest.mark.parametrize("name", ["llada_tiny", "dream_tiny"])
@pytest.mark.parametrize("units", ["kv", "query"])
def test_generation_is_token_identical_to_reference(fixture_model, name, units):
    """Greedy float32 generation of a left-padded batch: gather and reference give the same
    tokens, with sparse steps really run."""
    model = fixture_model(name)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 120, (n,), generator=g).tolist() for n in (90, 70)]
    outs = {}
    for backend in ("reference", "gather"):
        cfg = SparseConfig(select=0.3, skip=0.25, block_size=16, backend=backend, gqa=units)
        outs[backend] = ad.generate(model, None, prompts, sparse=cfg, steps=8, gen_length=16)
        st = outs[backend].stats.sparse
        assert st.backend == backend and st.sparse_steps == 6
    assert torch.equal(outs["gather"].ids, outs["reference"].ids)
