"""SparseSession end to end on the recorded tiny LLaDA and Dream models (CPU, reference/flex)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from adaptive_dllm.attention.plan import prompt_block_count
from adaptive_dllm.budget.allocator import allocate
from adaptive_dllm.generation.api import generate
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.sparsity import SparseConfig

FAMILIES = ("llada_tiny", "dream_tiny")
P, G = 56, 16  # 72 tokens: 9 blocks of 8


class WithGen:
    """What ``generate`` should do: pass the generation length to the session."""

    def __init__(self, cfg: SparseConfig, gen_length: int = G) -> None:
        self.cfg, self.gen_length, self.sessions = cfg, gen_length, []

    def new_session(self, config, total_steps):
        s = self.cfg.new_session(config, total_steps, gen_length=self.gen_length)
        self.sessions.append(s)
        return s


def _ids(batch=1, seed=0, vocab=120):
    return torch.randint(0, vocab, (batch, P), generator=torch.Generator().manual_seed(seed))


def _gen(model, ids, sparse=None, steps=8):
    return generate(model, None, ids, sparse=sparse, steps=steps, gen_length=G)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_select_one_is_token_identical_to_dense(fixture_model, name, backend):
    model = fixture_model(name)
    ids = _ids(batch=2)
    dense = _gen(model, ids)
    cfg = SparseConfig(select=1.0, skip=0.0, block_size=32, backend=backend)
    out = _gen(model, ids, WithGen(cfg))
    assert torch.equal(out.ids, dense.ids)
    st = out.stats["sparse"]
    assert st["backend"] == "dense" and "select=1" in st["backend_reason"]
    assert (st["dense_steps"], st["sparse_steps"], st["realized_keep_ratio"]) == (8, 0, None)


@pytest.mark.parametrize("name", FAMILIES)
def test_both_families_respond_to_select(fixture_model, name):
    """Upstream Dream ignored select; here the kept fraction and the output follow it."""
    model = fixture_model(name)
    ids = _ids()
    seen = {}
    for select in (0.25, 0.6):
        cfg = SparseConfig(select=select, skip=0.25, block_size=8, backend="reference",
                           region="joint")
        spec = WithGen(cfg)
        out = _gen(model, ids, spec)
        st = out.stats["sparse"]
        assert (st["dense_steps"], st["sparse_steps"], st["plan_builds"]) == (2, 6, 2)
        assert st["backend"] == "reference"
        units = model.config.n_kv_heads * model.config.n_layers
        want = round(select * units * 9) / (units * 9)
        assert st["realized_keep_ratio"] == pytest.approx(want, abs=1e-12)
        logits = model(torch.cat([ids, out.ids], 1), attn=spec.sessions[0])
        seen[select] = logits
    assert not torch.allclose(seen[0.25], seen[0.6])


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("region", ["separate", "joint"])
def test_realized_keep_ratio_equals_allocator_target(fixture_model, name, region):
    model = fixture_model(name)
    scores = torch.rand(model.config.n_layers, model.config.n_heads,
                        generator=torch.Generator().manual_seed(3))
    imp = HeadImportance(scores=scores, head_kind="query", metadata={})
    cfg = SparseConfig(select=0.4, skip=0.25, block_size=8, backend="reference", region=region,
                       importance=imp)
    out = _gen(model, _ids(), WithGen(cfg))
    st = out.stats["sparse"]
    L, bs = P + G, 8
    n = -(-L // bs)
    w = cfg.weights(model.config)
    if region == "joint":
        a = allocate(w, 0.4, n)
        want = a.realised_total / (a.n_units * n)
    else:
        n_p = prompt_block_count(L, G, bs)
        ap, ag = allocate(w, 0.4, n_p), allocate(w, 0.4, n - n_p)
        want = (ap.realised_total + ag.realised_total) / (ap.n_units * n)
        assert st["realized_keep_ratio_gen"] == ag.realised_total / (ag.n_units * (n - n_p))
    assert st["allocator_keep_ratio"] == st["realized_keep_ratio"] == pytest.approx(want, abs=0)
    assert st["region"] == region


def test_plans_identical_within_gqa_group(fixture_model):
    model = fixture_model("dream_tiny")  # 4 query heads, 2 KV heads
    spec = WithGen(SparseConfig(select=0.3, skip=0.5, block_size=8, backend="reference"))
    _gen(model, _ids(), spec, steps=4)
    session = spec.sessions[0]
    for plan in map(session.plan_of, range(model.config.n_layers)):
        assert plan.n_units == 2 and plan.group == 2  # one plan per KV head
        from adaptive_dllm.attention.flex import block_mask

        per_head = block_mask(plan, 4)  # what the flex kernel sees, per query head
        kv = per_head.full_kv_indices
        cnt = per_head.full_kv_num_blocks
        assert torch.equal(kv[:, 0], kv[:, 1]) and torch.equal(kv[:, 2], kv[:, 3])
        assert torch.equal(cnt[:, 0], cnt[:, 1])
    q_mode = WithGen(SparseConfig(select=0.3, skip=0.5, block_size=8, backend="reference",
                                  gqa="query"))
    _gen(model, _ids(), q_mode, steps=4)
    assert q_mode.sessions[0].plan_of(0).n_units == 4


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_equals_one_by_one(fixture_model, name):
    model = fixture_model(name)
    ids = _ids(batch=2, seed=5)
    cfg = SparseConfig(select=0.3, skip=0.25, block_size=8, backend="reference")
    batched = _gen(model, ids, WithGen(cfg))
    for b in range(2):
        single = _gen(model, ids[b:b + 1], WithGen(cfg))
        assert torch.equal(single.ids[0], batched.ids[b])


def test_left_padded_batch_runs(fixture_model):
    model = fixture_model("llada_tiny")
    rows = [[5] * 40, [7] * 56]
    cfg = SparseConfig(select=0.3, skip=0.25, block_size=8, backend="reference")
    out = generate(model, None, rows, sparse=WithGen(cfg), steps=8, gen_length=G)
    assert out.ids.shape == (2, G)
    assert out.stats["sparse"]["sparse_steps"] == 6
    # Rows of different lengths share one block grid and budget: said, not hidden.
    assert "left padding [16, 0]" in out.stats["batch_note"]
    equal = generate(model, None, [[5] * 40, [7] * 40], sparse=WithGen(cfg), steps=8, gen_length=G)
    assert equal.stats["batch_note"] is None


def test_auto_runs_dense_on_cpu_and_says_why(fixture_model):
    model = fixture_model("llada_tiny")
    ids = _ids()
    out = _gen(model, ids, WithGen(SparseConfig(select=0.3, block_size=32)))
    st = out.stats["sparse"]
    assert st["backend"] == "dense" and "cpu" in st["backend_reason"]
    assert torch.equal(out.ids, _gen(model, ids).ids)
    assert st["plan_builds"] == 0 and st["time_plan_s"] == 0.0  # nothing built, nothing charged


def test_likelihood_mode_builds_every_forward(fixture_model):
    model = fixture_model("dream_tiny")
    session = SparseConfig(select=0.3, block_size=8, backend="reference",
                           likelihood=True).new_session(model.config, 1)
    ids = _ids()
    model(ids, attn=session)
    model(ids[:, :40], attn=session)  # another length: new plans
    st = session.stats()
    assert st["plan_builds"] == 2 * model.config.n_layers and st["forwards"] == 2
    assert st["time_plan_s"] > 0


def test_length_change_rebuilds_plan(fixture_model):
    model = fixture_model("llada_tiny")
    session = SparseConfig(select=0.3, skip=0.5, block_size=8,
                           backend="reference").new_session(model.config, 2)
    session.begin_step(0, 2)
    model(_ids(), attn=session)  # build step
    assert session.plan_builds == 2
    session.begin_step(1, 2)
    model(_ids()[:, :30], attn=session)  # sparse step at another length
    assert session.plan_builds == 4 and session.plan_of(0).seq_len == 30


@contextlib.contextmanager
def _no_host_sync(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("host sync in a sparse step")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
            m.setattr(torch.Tensor, name, boom)
        yield


def test_sparse_step_does_not_sync(fixture_model, monkeypatch):
    model = fixture_model("dream_tiny")
    session = SparseConfig(select=0.3, skip=0.5, block_size=8,
                           backend="reference").new_session(model.config, 2, gen_length=G)
    ids = _ids()
    session.begin_step(0, 2)
    model(ids, attn=session)
    session.begin_step(1, 2)
    captured = {}

    def spy(layer, q, k, v, km):
        captured[layer] = (q, k, v, km)
        return session(layer, q, k, v, km)

    model(ids, attn=spy)  # warm the measured-plan bookkeeping
    q, k, v, km = captured[0]
    with _no_host_sync(monkeypatch):
        session(0, q, k, v, km)
    assert session.stats()["sparse_steps"] == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("backend", ["flex", "triton"])
def test_gpu_generation_sparse_backends(fixture_model, name, backend):
    import copy

    model = copy.deepcopy(fixture_model(name)).to("cuda", torch.bfloat16)
    ids = torch.randint(0, 120, (2, 500), generator=torch.Generator().manual_seed(0)).cuda()
    dense = generate(model, None, ids, steps=8, gen_length=G)
    full = generate(model, None, ids, steps=8, gen_length=G,
                    sparse=WithGen(SparseConfig(select=1.0, block_size=64, backend=backend)))
    assert torch.equal(full.ids, dense.ids)
    out = generate(model, None, ids, steps=8, gen_length=G,
                   sparse=WithGen(SparseConfig(select=0.3, skip=0.25, block_size=64,
                                               backend=backend)))
    st = out.stats["sparse"]
    assert st["backend"] == backend and st["sparse_steps"] == 6 and st["build_kernel"] == "fused"
    assert st["realized_keep_ratio"] == st["allocator_keep_ratio"]
    assert st["time_sparse_s"] > 0 and st["time_plan_s"] > 0


def test_allocation_notes_name_their_region():
    from adaptive_dllm.models import ModelConfig, Transformer
    from adaptive_dllm.sparsity.config import SparseConfig

    torch.manual_seed(0)
    cfg = ModelConfig(family="llada", vocab_size=40, hidden_size=16, n_layers=1, n_heads=2,
                      n_kv_heads=1, intermediate_size=32, max_seq_len=256, mask_id=39)
    model = Transformer(cfg).eval()
    # 32 prompt + 32 generated tokens, blocks of 32: each region is one block, below the
    # one-block floor at select 0.3, so both allocations carry a note.
    session = SparseConfig(select=0.3, skip=0.0, block_size=32, backend="reference").new_session(
        cfg, 2, gen_length=32)
    ids = torch.randint(0, 39, (1, 64))
    for step in range(2):
        session.begin_step(step, 2)
        model(ids, attn=session)
    note = session.stats()["allocation_note"]
    assert note.startswith("prompt keys: ") and "; generation keys: " in note


@pytest.mark.parametrize("refresh, builds", [("block", 2), ("never", 1)])
def test_plan_refreshes_at_llada_block_boundaries(fixture_model, refresh, builds):
    model = fixture_model("llada_tiny")
    cfg = SparseConfig(select=0.5, skip=0.25, block_size=8, backend="reference", refresh=refresh)
    # 8 steps over 2 blocks of 16: dense steps 0-1 (plan built at 1), block 2 starts at step 4.
    out = generate(model, None, _ids(), sparse=cfg, steps=8, gen_length=32, block_length=16)
    st = out.stats["sparse"]
    assert st["plan_builds"] == builds * model.config.n_layers
    assert st["refresh_steps"] == builds - 1
    assert st["dense_steps"] == 2 + (builds - 1) and st["sparse_steps"] == 8 - st["dense_steps"]


def test_clock_charges_the_build_steps_excess_to_the_plan(monkeypatch):
    """The build step's time beyond a median dense step is plan time (the fused kernel scores
    inside attention, outside any timed build); a rebuild inside a sparse step comes out of the
    sparse time, not the dense time."""
    from adaptive_dllm.sparsity.stats import PhaseClock

    clock = PhaseClock(torch.device("cpu"))
    now = iter([0.0, 1.0, 2.1, 3.0,  # dense, dense, dense, build
                3.2, 3.3,  # the timed part of the build (allocation, plan) inside it
                4.6,  # sparse
                4.7, 4.9,  # a rebuild inside the sparse step
                5.6])  # end
    monkeypatch.setattr(clock, "_now", lambda: next(now))
    for kind in ("dense", "dense", "dense", "build"):
        clock.mark(kind)
    clock.stop_plan(clock.start_plan())
    clock.mark("sparse")
    clock.stop_plan(clock.start_plan())
    got = clock.phases()
    # build 1.6 s, median dense step 1.0 s: plan 0.6 + the 0.2 s rebuild
    assert got == pytest.approx({"dense": 3.0 + 1.0, "plan": 0.6 + 0.2, "sparse": 0.8})


def test_clock_charges_no_plan_time_when_no_plan_was_built(monkeypatch):
    """A run the cost model turned dense still has a "build" step in its schedule; its time is
    dense time (a review found it charged as plan time)."""
    from adaptive_dllm.sparsity.stats import PhaseClock

    clock = PhaseClock(torch.device("cpu"))
    now = iter([0.0, 1.0, 2.0, 3.5, 4.0])  # dense, dense, build (1.5 s), sparse-kind, end
    monkeypatch.setattr(clock, "_now", lambda: next(now))
    for kind in ("dense", "dense", "build", "sparse"):
        clock.mark(kind)
    got = clock.phases(charge_build_excess=False)
    assert got == pytest.approx({"dense": 3.5, "plan": 0.0, "sparse": 0.5})


def test_auto_moves_to_a_runnable_backend(monkeypatch):
    pytest.importorskip("triton")
    from adaptive_dllm.sparsity import session as session_mod
    from adaptive_dllm.sparsity.cost import Decision

    chosen = Decision("triton", "predicted sparse attention 0.40x of dense per step")
    wide = torch.zeros(1, 2, 8, 256)
    moved = session_mod._runnable(chosen, wide)
    assert moved.backend == "flex" and "head dim 256 > 128" in moved.reason
    assert session_mod._runnable(chosen, torch.zeros(1, 2, 8, 128)) is chosen
    monkeypatch.setattr(session_mod, "triton_available", lambda: False)
    gone = session_mod._runnable(chosen, wide)
    assert gone.backend == "dense" and "triton is not installed" in gone.reason


def test_build_step_returns_dense_attention_and_installs_the_plan():
    """What the benchmark calls directly: usable before any forward started the session."""
    from adaptive_dllm.attention.api import attend

    torch.manual_seed(0)
    cfg = SparseConfig(select=0.3, block_size=16, backend="reference")
    model = _tiny_dream_config()
    session = cfg.new_session(model, 4, gen_length=16)
    q, k, v = torch.randn(1, 4, 64, 8), torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8)
    out = session.build_step(0, q, k, v, None)
    torch.testing.assert_close(out, attend(q, k, v))
    assert session.plan_of(0) is not None and session.plan_of(0).seq_len == 64
    assert session.stats()["build_kernel"] == "separate" and session.plan_builds == 1


class _ProtocolOnly:
    """A user's backend with only the Backend protocol (no fused build step)."""

    name, block_sizes, max_head_dim, compile_log = "reference", (), None, ()

    def __init__(self, inner):
        self.inner, self.runs = inner, 0

    def supports(self, *, device_type, head_dim, block_size):
        return None

    def prepare(self, plan, n_heads):
        return None

    def run(self, q, k, v, *, key_mask=None, plan=None, prepared=None):
        self.runs += 1
        return self.inner.run(q, k, v, key_mask=key_mask, plan=plan, prepared=prepared)


def test_a_protocol_only_backend_builds_plans_separately(monkeypatch):
    """The fused build step is optional: the default build_kernel="fused" falls back to the
    separate build for a backend that lacks it, instead of an AttributeError."""
    from adaptive_dllm.attention import api
    from adaptive_dllm.attention.backends import Backend

    mine = _ProtocolOnly(api.get_backend("reference"))
    assert isinstance(mine, Backend)
    monkeypatch.setitem(api._BACKENDS, "reference", mine)
    torch.manual_seed(0)
    session = SparseConfig(select=0.3, block_size=16, backend="reference").new_session(
        _tiny_dream_config(), 4, gen_length=16)
    q, k, v = torch.randn(1, 4, 64, 8), torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8)
    session.build_step(0, q, k, v, None)
    assert session.stats()["build_kernel"] == "separate" and session.plan_of(0) is not None
    session.run(0, q, k, v, None)
    assert mine.runs == 1


def _tiny_dream_config():
    from adaptive_dllm.models import ModelConfig

    return ModelConfig(family="dream", vocab_size=40, hidden_size=32, n_layers=1, n_heads=4,
                       n_kv_heads=2, intermediate_size=64, max_seq_len=256, mask_id=39)


def test_generation_region_floor_is_not_a_warning(fixture_model, caplog):
    """The few generation blocks always hit the one-block floor: the stats say so, the log does
    not warn once per generation (benchmark sweeps printed dozens of such warnings)."""
    import logging

    model = fixture_model("llada_tiny")
    cfg = SparseConfig(select=0.3, skip=0.25, block_size=8, backend="reference")
    with caplog.at_level(logging.INFO, logger="adaptive_dllm.budget.allocator"):
        out = _gen(model, _ids(), sparse=WithGen(cfg))
    note = out.stats["sparse"]["allocation_note"]
    assert "generation keys" in note and "every unit keeps 1" in note
    levels = {r.levelno for r in caplog.records if "every unit keeps" in r.getMessage()}
    assert levels == {logging.INFO}
