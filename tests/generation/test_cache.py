"""Approximate K/V cache and threshold decoding in both samplers: the exactness properties
(refreshed every step = no cache, select=1 = dense with the same cache, batch = one by one,
tau > 1 = one token per step) and the stats."""

from __future__ import annotations

import pytest
import torch

import adaptive_dllm as ad
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation import DreamOptions, LladaOptions
from adaptive_dllm.models import load_model
from adaptive_dllm.sparsity import SparseConfig

PROMPTS = ["ROMEO:", "Now is the winter of our"]


@pytest.fixture(scope="module")
def bundled():
    return ad.load()


@pytest.fixture(scope="module")
def dream(fixtures_dir):
    return load_model(fixtures_dir / "dream_tiny", device="cpu")


_OPTS_L = {"gen_length": 32, "block_length": 8}
_OPTS_D = {"gen_length": 16, "block_length": 4}


def _llada(bundled, prompt="ROMEO:", **kw):
    model, tok = bundled
    return ad.generate(model, tok, prompt, **{**_OPTS_L, **kw})


def _dream(model, prompt=(5, 9, 13, 2), **kw):
    return ad.generate(model, None, list(prompt), **{**_OPTS_D, **kw})


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_cache_refreshed_at_every_step_equals_no_cache(bundled, dream, cache):
    # One step per block: every step is a refresh forward.
    plain = _llada(bundled, steps=4)
    cached = _llada(bundled, steps=4, cache=cache)
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.stats["refreshes"] == cached.stats["forwards"] == 4
    plain = _dream(dream, steps=4)
    cached = _dream(dream, steps=4, cache=cache)
    assert torch.equal(cached.sequences, plain.sequences)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_steps_are_used_and_approximate(bundled, cache):
    out = _llada(bundled, cache=cache)
    assert out.stats["forwards"] == 32 and out.stats["refreshes"] == 4
    assert out.stats["cache"] == cache
    assert not (out.ids == bundled[0].config.mask_id).any()


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_select_one_with_a_cache_equals_dense_with_the_same_cache(bundled, dream, cache):
    full = SparseConfig(select=1.0, skip=0.2, block_size=16, backend="reference")
    dense = _llada(bundled, cache=cache)
    sparse = _llada(bundled, cache=cache, sparse=full)
    assert torch.equal(sparse.sequences, dense.sequences)
    assert sparse.stats["sparse"]["cached_sparse_steps"] == 0
    dense = _dream(dream, cache=cache)
    sparse = _dream(dream, cache=cache, sparse=full)
    assert torch.equal(sparse.sequences, dense.sequences)


def test_sparse_with_a_cache_runs_refreshes_and_cached_steps_sparse(bundled):
    """The rule of cached_sparse.py: 4 refreshes at skip 0.2 -> refresh 0 dense and builds, the
    rest sparse; every cached step from block 0 on runs a decode plan near select."""
    cfg = SparseConfig(select=0.5, skip=0.2, block_size=16, backend="reference")
    out = _llada(bundled, prompt="ROMEO: " * 12, cache="dual", sparse=cfg)
    s = out.stats["sparse"]
    assert s["schedule_over"] == "refresh forwards"
    assert (s["dense_steps"], s["sparse_steps"]) == (1, 3)
    assert (s["cached_dense_steps"], s["cached_sparse_steps"]) == (0, 28)
    assert 0.4 < s["cached_keep_ratio"] < 0.7
    assert not (out.ids == bundled[0].config.mask_id).any()


def test_decode_plans_allocate_once_per_key_block_count(bundled, monkeypatch):
    """The decode plans' budgets depend only on Nk: one allocation per Nk for the whole run,
    not one per layer and refresh."""
    import adaptive_dllm.budget.allocator as allocator
    import adaptive_dllm.sparsity.planner as planner

    calls = []
    real = allocator.allocate

    def spy(weights, select, n_blocks, **kw):
        calls.append(n_blocks)
        return real(weights, select, n_blocks, **kw)

    monkeypatch.setattr(allocator, "allocate", spy)
    monkeypatch.setattr(planner, "allocate", spy)
    cfg = SparseConfig(select=0.5, skip=0.2, block_size=16, backend="reference")
    out = _llada(bundled, prompt="ROMEO: " * 12, cache="dual", sparse=cfg)
    assert out.stats["sparse"]["cached_sparse_steps"] == 28
    assert out.stats["sparse"]["cached_keep_ratio"] == pytest.approx(0.5)
    assert len(calls) == len(set(calls)), calls


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_padded_batch_equals_one_by_one(cache):
    # CPU float32: in bfloat16 on a GPU a batch of two runs other matrix kernels than a batch of
    # one, and a near-tie between two tokens can then flip (seen with the prefix cache on an H200).
    model, tok = ad.load(device="cpu")
    batch = ad.generate(model, tok, PROMPTS, cache=cache, **_OPTS_L)
    for i, prompt in enumerate(PROMPTS):
        alone = ad.generate(model, tok, prompt, cache=cache, **_OPTS_L)
        assert torch.equal(batch.ids[i], alone.ids[0]), (cache, i)


def test_padded_batch_equals_one_by_one_dream(dream):
    rows = [[5, 9, 13, 2], [7, 7]]
    batch = ad.generate(dream, None, rows, cache="dual", **_OPTS_D)
    for i, row in enumerate(rows):
        assert torch.equal(batch.ids[i], _dream(dream, prompt=row, cache="dual").ids[0])


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_threshold_above_one_is_one_token_per_step(bundled, dream, cache):
    one = _llada(bundled, cache=cache)  # steps = gen_length: one token per step
    par = _llada(bundled, cache=cache, threshold=1.5)
    assert torch.equal(par.sequences, one.sequences)
    assert par.stats["forwards"] == 32 and par.stats["tokens_per_forward"] == 1.0
    # Dream's noise schedule is not one token per step; tau > 1 commits exactly one (the most
    # confident), like alg_temp-free maskgit_plus with counts of 1.
    par = _dream(dream, cache=cache, threshold=1.5, output_history=True)
    masked = (par.history == dream.config.mask_id).sum(-1).flatten()
    assert masked.tolist() == list(range(16, -1, -1))


def test_threshold_commits_every_confident_token(bundled):
    out = _llada(bundled, threshold=0.3, cache="prefix", output_history=True)
    s = out.stats
    assert s["forwards"] < 32 and s["tokens_per_forward"] > 1
    assert s["forwards"] == s["steps"] and s["threshold"] == 0.3
    hist = out.history  # (forwards + 1, 1, G)
    assert hist.shape == (s["forwards"] + 1, 1, 32)
    masked = (hist == bundled[0].config.mask_id).sum(-1).flatten()
    assert masked[0] == 32 and masked[-1] == 0
    assert bool((masked[:-1] > masked[1:]).all())  # at least one token per step


def test_bad_options_are_one_line_errors():
    with pytest.raises(AdllmError, match="cache='full' is not valid"):
        LladaOptions(cache="full")
    with pytest.raises(AdllmError, match="threshold=0 must be"):
        LladaOptions(threshold=0)
    with pytest.raises(AdllmError, match="steps=64 does not apply with threshold"):
        LladaOptions(gen_length=128, steps=64, threshold=0.9)
    with pytest.raises(AdllmError, match="remasking='low_confidence'"):
        LladaOptions(threshold=0.9, remasking="random")
    with pytest.raises(AdllmError, match="ranked alg"):
        DreamOptions(alg="origin", threshold=0.9)
    with pytest.raises(AdllmError, match="ranked alg"):
        DreamOptions(alg_temp=0.5, threshold=0.9)
    with pytest.raises(AdllmError, match="steps=8 does not apply with threshold"):
        DreamOptions(gen_length=16, steps=8, threshold=0.9)
    # steps equal to gen_length changes nothing: accepted by both samplers
    assert LladaOptions(gen_length=16, steps=16, threshold=0.9).steps == 16
    assert DreamOptions(gen_length=16, steps=16, threshold=0.9).steps == 16
    with pytest.raises(AdllmError, match="not divisible by block_length"):
        DreamOptions(gen_length=10, block_length=4)


def test_threshold_clashes_is_the_one_rule():
    from adaptive_dllm.generation.cache import threshold_clashes

    assert threshold_clashes({}) == []
    assert threshold_clashes({"steps": 16, "gen_length": 16}) == []
    assert threshold_clashes({"steps": 16}) == ["steps"]  # the default length is not known
    assert threshold_clashes({"steps": 8, "gen_length": 16, "remasking": "random", "alg": "origin",
                              "alg_temp": 0.1}) == ["steps", "remasking", "alg", "alg_temp"]
    assert threshold_clashes({"remasking": "low_confidence", "alg": "entropy",
                              "alg_temp": 0.0}) == []


def test_a_session_without_a_sparse_config_runs_dense_under_a_cache(bundled, stub_session):
    """Any StepSession works with a cache: it sees the refresh forwards only, cached steps run
    dense attention, and the output equals the session-free run."""
    class Spec:
        def __init__(self):
            self.sessions = []

        def new_session(self, config, total_steps):
            self.sessions.append(stub_session())
            return self.sessions[-1]

    spec = Spec()
    out = _llada(bundled, cache="dual", sparse=spec)
    assert torch.equal(out.sequences, _llada(bundled, cache="dual").sequences)
    assert spec.sessions[0].begun == [(b, 4) for b in range(4)]
    assert out.stats["sparse"]["cached_dense_steps"] == 28


class _GpuLikeRefreshes:
    """A cost model whose refreshes pick the reference backend (as ``triton`` on a GPU would)."""

    def __init__(self, decode):
        from adaptive_dllm.sparsity.cost import CostModel

        self.model = CostModel(decode=decode)

    def decide(self, **_):
        from adaptive_dllm.sparsity.cost import Decision

        return Decision("reference", "GPU-like refreshes (test)")

    def decide_cached(self, **kw):
        return self.model.decide_cached(**kw)


@pytest.mark.parametrize("decode, expect", [
    (None, "dense"),  # the bundled model's cache is tiny: cached steps stay dense under auto
    ({"bandwidth": 1.0, "overhead_s": 0.0, "build_reads": 1.0}, "reference"),
])
def test_auto_decides_cached_steps_with_the_cost_model(bundled, monkeypatch, decode, expect):
    from adaptive_dllm.sparsity import session as session_mod
    from adaptive_dllm.sparsity.cost import DecodeCost

    constants = DecodeCost(**decode) if decode else DecodeCost()
    monkeypatch.setattr(session_mod, "CostModel", lambda: _GpuLikeRefreshes(constants))
    cfg = SparseConfig(select=0.5, skip=0.2, block_size=16, backend="auto")
    out = _llada(bundled, prompt="ROMEO: " * 12, cache="prefix", sparse=cfg)
    s = out.stats["sparse"]
    assert s["backend"] == "reference" and s["cached_backend"] == expect
    if expect == "dense":
        assert "short cache" in s["cached_reason"]
        assert (s["cached_dense_steps"], s["cached_sparse_steps"]) == (28, 0)
        assert s["cached_keep_ratio"] is None
    else:
        assert "7 per block" in s["cached_reason"]  # 8 steps per block of 8: 7 cached
        assert (s["cached_dense_steps"], s["cached_sparse_steps"]) == (0, 28)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_sparse_steps_run_the_triton_kernel_on_a_gpu(cache, monkeypatch):
    """On CUDA the cached steps of a triton session run decode_sparse (this path once failed
    on an import that only CUDA reaches), and each call inside the generation matches the eager
    oracle on its own inputs (Triton's float32 dots use TF32: the bf16 kernel test's tolerance)."""
    pytest.importorskip("triton")
    from adaptive_dllm.kernels import decode_sparse as ds

    real, calls = ds.decode_sparse, []

    def checked(q, k, v, idx, cnt, **kw):
        out = real(q, k, v, idx, cnt, **kw)
        want = ds.decode_reference(q.float(), k.float(), v.float(), idx, cnt, **kw)
        torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
        calls.append(1)
        return out

    monkeypatch.setattr(ds, "decode_sparse", checked)
    model, tok = ad.load(device="cuda", dtype=torch.float32)
    cfg = SparseConfig(select=0.5, skip=0.2, block_size=16, backend="triton")
    # Eager steps: a replayed CUDA graph would not call the spy (test_step_graph.py covers it).
    out = ad.generate(model, tok, "ROMEO: " * 12, cache=cache, sparse=cfg, cuda_graphs=False,
                      **_OPTS_L)
    s = out.stats["sparse"]
    assert s["cached_backend"] == "triton" and out.stats["graph_replays"] == 0
    assert (s["cached_dense_steps"], s["cached_sparse_steps"]) == (0, 28)
    assert len(calls) == 28 * model.config.n_layers
    assert not (out.ids == model.config.mask_id).any()
