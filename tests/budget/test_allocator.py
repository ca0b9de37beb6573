"""allocate(): exact totals, bounds, monotonicity, invariances (survey §3.8, items 1-8)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adaptive_dllm.budget import allocate, relative_weights, uniform_weights
from adaptive_dllm.errors import AdllmError

SELECTS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 0.9, 0.95, 1.0)
N_BLOCKS = (8, 32, 128, 512)


def _lognormal(shape: tuple[int, int], seed: int = 0, sigma: float = 0.6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).mul(sigma).exp()


def _weights(kind: str, family: str) -> torch.Tensor:
    """The acceptance shapes: LLaDA 32 x 32 KV heads; Dream 28 x 28 query heads -> 4 KV heads."""
    layers, heads, kv = {"llada": (32, 32, 32), "dream": (28, 28, 4)}[family]
    if kind == "uniform":
        return uniform_weights(layers, kv)
    return relative_weights(_lognormal((layers, heads)), group_size=heads // kv)


def _check_invariants(a, weights, select, n, hard=1):
    """Bounds, exactness (or the documented floor case), recounted figures."""
    u = weights.numel()
    k = a.blocks
    assert k.shape == weights.shape and k.dtype == torch.int64
    assert a.target_total == round(select * u * n)
    assert 1 <= a.k_min <= n and int(k.min()) >= max(a.k_min, 1) and int(k.max()) <= n
    if a.target_total >= u * min(hard, n):
        assert a.realised_total == a.target_total
        assert abs(a.realised_keep_ratio - select) <= 0.5 / (u * n) + 1e-12
    else:
        assert bool((k == a.k_min).all()) and not a.exact and a.note
    # Counts from the final integer allocation (survey §3.7), with correct denominators.
    assert a.saturated == int((k == n).sum()) <= u
    assert a.floored == int(((k == a.k_min) & (k < n)).sum())
    assert a.saturated + a.floored + a.free == u
    assert a.realised_keep_ratio == int(k.sum()) / (u * n)


# -- acceptance grid -------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("kind", ["uniform", "lognormal"])
@pytest.mark.parametrize("n", N_BLOCKS)
def test_acceptance_grid(family, kind, n):
    weights = _weights(kind, family)
    previous = None
    for select in SELECTS:
        a = allocate(weights, select, n)
        _check_invariants(a, weights, select, n)
        if previous is not None:
            assert bool((a.blocks >= previous).all()), f"lost blocks going up to select {select}"
        previous = a.blocks
        # Integer and continuous solutions agree within rounding (survey §3.7).
        assert a.rounding_gap < 1.0
    assert bool((previous == n).all())  # select = 1 keeps everything


def test_floor_case_keeps_one_block_and_says_why(caplog):
    weights = _weights("lognormal", "llada")
    with caplog.at_level(logging.WARNING):
        a = allocate(weights, 0.05, 8)  # 0.4 blocks per unit on average < 1
    assert a.target_total == round(0.05 * 1024 * 8) < 1024
    assert bool((a.blocks == 1).all()) and a.realised_keep_ratio == 1 / 8
    assert "every unit keeps 1" in a.note and "every unit keeps 1" in caplog.text
    with pytest.raises(AdllmError, match="raise select or use more key blocks"):
        allocate(weights, 0.05, 8, strict=True)


def test_floor_log_level_lowers_the_line_not_the_note(caplog):
    weights = _weights("lognormal", "llada")
    with caplog.at_level(logging.INFO, logger="adaptive_dllm.budget.allocator"):
        a = allocate(weights, 0.05, 8, floor_log_level=logging.INFO)
    assert "every unit keeps 1" in a.note
    assert [r.levelno for r in caplog.records] == [logging.INFO]


# -- regression: the upstream shortfall ------------------------------------------------------
@pytest.mark.parametrize("select", [0.8, 0.9, 0.95, 1.0])
def test_no_shortfall_at_high_select(select):
    weights = relative_weights(_lognormal((32, 32), seed=3, sigma=1.0))  # wide spread
    a = allocate(weights, select, 64)
    assert abs(a.realised_keep_ratio - select) <= 1 / (a.n_units * 64)
    # Upstream clamp(w * select, ., 1) falls short here.
    assert float((weights * select).clamp(max=1.0).mean()) < select - 0.01
    if select == 1.0:
        assert bool((a.blocks == 64).all()) and a.saturated == a.n_units


# -- properties (hypothesis) -----------------------------------------------------------------
SPECIAL = st.sampled_from([1e-4, 0.01, 0.1 - 1e-9, 0.1, 0.1 + 1e-9, 0.3, 0.5, 0.9, 0.999, 1.0])


@st.composite
def raw_scores(draw) -> torch.Tensor:
    """Scores with NaN, Inf, negative and zero entries mixed in (never all non-finite)."""
    layers, heads = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    x = _lognormal((layers, heads), seed=draw(st.integers(0, 10_000)),
                   sigma=draw(st.floats(0.0, 2.0)))
    x = x - draw(st.floats(0.0, 2.0))  # some negative
    special = draw(st.lists(st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0]),
                            max_size=layers * heads - 1))
    flat = x.flatten()
    flat[: len(special)] = torch.tensor(special, dtype=torch.float64)
    return flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))].view(
        layers, heads)


@st.composite
def problems(draw):
    scores = draw(raw_scores())
    weights = relative_weights(scores, normalize=draw(st.sampled_from(
        ["global_percentile", "global", "per_layer", "rank"])))
    n = draw(st.integers(1, 64))
    select = draw(st.one_of(SPECIAL, st.floats(1e-6, 1.0)))
    options = {"min_keep_ratio": draw(st.sampled_from([0.0, 0.1, 0.25])),
               "min_blocks": draw(st.integers(1, 3)),
               "budget": draw(st.sampled_from(["global", "per_layer"]))}
    return weights, select, n, options


@settings(max_examples=150, deadline=None)
@given(problems())
def test_property_exact_total_and_bounds(problem):
    weights, select, n, options = problem
    a = allocate(weights, select, n, **options)
    _check_invariants(a, weights, select, n, hard=options["min_blocks"])
    assert a.k_min >= min(options["min_blocks"], n)
    if options["budget"] == "per_layer" and a.exact:
        layer_totals = a.blocks.sum(dim=1)
        assert int(layer_totals.max() - layer_totals.min()) <= 1


@settings(max_examples=100, deadline=None)
@given(problems(), st.floats(1e-6, 1.0))
def test_property_monotone_in_select(problem, other):
    weights, select, n, options = problem
    lo, hi = sorted((select, other))
    a, b = allocate(weights, lo, n, **options), allocate(weights, hi, n, **options)
    assert bool((a.blocks <= b.blocks).all())


def test_monotone_over_a_fine_sweep():
    """House monotonicity over 2,000 select values (survey §3.3), with a soft floor."""
    weights = relative_weights(_lognormal((16, 16), seed=5))
    previous = torch.zeros(16, 16, dtype=torch.int64)
    for select in np.linspace(0.001, 1.0, 2000):
        k = allocate(weights, float(select), 64, min_keep_ratio=0.1).blocks
        assert bool((k >= previous).all())
        previous = k


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(0, 10_000), st.integers(1, 64),
       st.floats(1e-3, 1.0), st.sampled_from(["global", "per_layer"]))
def test_property_permutation_equivariant(layers, heads, seed, n, select, budget):
    weights = _lognormal((layers, heads), seed=seed)  # continuous: no ties
    base = allocate(weights, select, n, budget=budget).blocks
    gen = torch.Generator().manual_seed(seed)
    if budget == "global":  # any permutation of all units
        perm = torch.randperm(weights.numel(), generator=gen)
        permuted = allocate(weights.flatten()[perm].view(layers, heads), select, n).blocks
        assert torch.equal(permuted.flatten(), base.flatten()[perm])
    else:  # permutations within each layer
        perm = torch.randperm(heads, generator=gen)
        permuted = allocate(weights[:, perm], select, n, budget=budget).blocks
        assert torch.equal(permuted, base[:, perm])


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(-20, 20))
def test_property_weight_scale_invariant(problem, exponent):
    """w -> c * w leaves k unchanged (c a power of two, so the scaled weights are exact)."""
    weights, select, n, options = problem
    a = allocate(weights, select, n, **options)
    b = allocate(weights * 2.0**exponent, select, n, **options)
    assert torch.equal(a.blocks, b.blocks)


@settings(max_examples=30, deadline=None)
@given(problems())
def test_property_deterministic(problem):
    weights, select, n, options = problem
    a, b = allocate(weights, select, n, **options), allocate(weights.clone(), select, n, **options)
    assert torch.equal(a.blocks, b.blocks) and torch.equal(a.lam, b.lam)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 16), st.integers(1, 64), st.floats(1e-3, 1.0),
       st.sampled_from(["global", "per_layer"]))
def test_property_equal_weights_equal_counts(layers, units, n, select, budget):
    a = allocate(uniform_weights(layers, units), select, n, budget=budget)
    assert int(a.blocks.max() - a.blocks.min()) <= 1
    if budget == "global" and a.exact:  # remainder to the lowest unit indices
        flat = a.blocks.flatten()
        assert bool((flat.diff() <= 0).all())


# -- against brute force ---------------------------------------------------------------------
def _webster_brute_force(w: np.ndarray, total: int, k_min: int, n: int) -> np.ndarray:
    """Materialise every priority w_h / (j + 0.5), j >= k_min, and take the global top ones."""
    flat = w.ravel()
    units, js = np.meshgrid(np.arange(flat.size), np.arange(k_min, n), indexing="ij")
    prio = flat[units] / (js + 0.5)
    order = np.lexsort((units.ravel(), -prio.ravel()))  # priority desc, then unit index
    take = units.ravel()[order[: total - flat.size * k_min]]
    return (k_min + np.bincount(take, minlength=flat.size)).reshape(w.shape)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5), st.integers(1, 10), st.integers(0, 10_000), st.integers(1, 40),
       st.floats(1e-3, 1.0), st.integers(1, 3))
def test_integer_part_equals_global_top_k(layers, heads, seed, n, select, min_blocks):
    weights = _lognormal((layers, heads), seed=seed, sigma=1.0)
    a = allocate(weights, select, n, min_blocks=min_blocks)
    assume(a.exact and not a.floor_lowered)
    expected = _webster_brute_force(weights.numpy(), a.target_total, a.k_min, n)
    assert np.array_equal(a.blocks.numpy(), expected)


def _lambda_by_bisection(w: np.ndarray, total: float, lo: float, hi: float) -> float:
    a, b = 0.0, hi / w.min()
    for _ in range(200):
        mid = (a + b) / 2
        if np.clip(mid * w, lo, hi).sum() < total:
            a = mid
        else:
            b = mid
    return (a + b) / 2


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 12), st.integers(0, 10_000), st.integers(2, 128),
       st.floats(0.02, 0.99))
def test_continuous_solution_matches_bisection_and_kkt(layers, heads, seed, n, select):
    weights = relative_weights(_lognormal((layers, heads), seed=seed, sigma=1.5))
    a = allocate(weights, select, n)
    assume(a.exact and not a.floor_lowered)
    w = weights.numpy().ravel()
    lam = _lambda_by_bisection(w * n, a.target_total, a.k_min, n)  # r = clip(lam * w, ., 1)
    x = a.continuous.numpy().ravel()
    assert abs(x.sum() - a.target_total) <= 1e-6 * a.target_total
    f_lam = np.clip(float(a.lam[0]) * w * n, a.k_min, n).sum()
    f_ref = np.clip(lam * w * n, a.k_min, n).sum()
    assert abs(f_lam - f_ref) <= 1e-9 * a.target_total
    free = (x > a.k_min + 1e-9) & (x < n - 1e-9)
    if free.any():  # unique lambda: KKT, free units share the ratio x / w
        assert abs(float(a.lam[0]) - lam) <= 1e-9 * lam
        np.testing.assert_allclose(x[free] / (w[free] * n), float(a.lam[0]), rtol=1e-9)
    # The keep ratios are r = clip(lam * w, k_min / N, 1): lam is not select once clipping binds.
    np.testing.assert_allclose(x / n, np.clip(float(a.lam[0]) * w, a.k_min / n, 1.0), rtol=1e-9)


# -- floors and modes ------------------------------------------------------------------------
def test_min_keep_ratio_floor_and_lowering(caplog):
    weights = relative_weights(_lognormal((4, 8), seed=1))
    a = allocate(weights, 0.5, 40, min_keep_ratio=0.25)
    assert a.k_min == 10 and not a.floor_lowered and int(a.blocks.min()) >= 10 and a.exact
    assert allocate(weights, 0.8, 10, min_keep_ratio=0.7).k_min == 7  # 0.7 * 10 is not 8
    with caplog.at_level(logging.WARNING):
        low = allocate(weights, 0.1, 40, min_keep_ratio=0.25)
    assert low.floor_lowered and low.requested_k_min == 10 and low.k_min == 4 and low.exact
    assert int(low.blocks.max() - low.blocks.min()) <= 1  # uniform below the soft floor
    assert "floor lowered to 4" in caplog.text and "lowered to 4" in low.note
    with pytest.raises(AdllmError, match="below the floor of 10 block"):
        allocate(weights, 0.1, 40, min_keep_ratio=0.25, strict=True)


def test_min_blocks_is_hard():
    weights = relative_weights(_lognormal((4, 8), seed=2))
    a = allocate(weights, 0.01, 40, min_blocks=3)
    assert bool((a.blocks == 3).all()) and not a.exact and a.k_min == 3
    assert allocate(weights, 0.5, 2, min_blocks=5).k_min == 2  # clipped to N


def test_per_layer_budget_spends_select_in_every_layer():
    weights = relative_weights(_lognormal((8, 8), seed=4, sigma=1.0))
    a = allocate(weights, 0.3, 100, budget="per_layer")
    layer_means = a.blocks.sum(dim=1).double() / (8 * 100)
    assert float((layer_means - 0.3).abs().max()) <= 1 / 800
    assert a.exact and a.lam.shape == (8,)
    g = allocate(weights, 0.3, 100)
    assert float((g.blocks.sum(dim=1).double() / 800 - 0.3).abs().max()) > 0.01


def test_single_block_and_single_unit():
    assert allocate(torch.ones(1, 1), 0.3, 1).blocks.item() == 1
    a = allocate(torch.tensor([[2.0]]), 0.3, 10)
    assert a.blocks.item() == 3 and a.exact


def test_summary_is_json_ready_and_consistent():
    import json

    weights = relative_weights(_lognormal((4, 8), seed=6))
    a = allocate(weights, 0.8, 16)
    s = a.summary()
    json.dumps(s)
    assert s["realised_total"] == s["target_total"] == round(0.8 * 32 * 16)
    assert s["saturated"] == a.saturated and s["blocks_total"] == 16
    rows = a.layer_summary()
    assert sum(r["blocks"] for r in rows) == a.realised_total
    assert sum(r["saturated"] for r in rows) == a.saturated


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0.0, 8), {}, r"select=0.0 must be a number in \(0, 1\]"),
        ((1.5, 8), {}, r"select=1.5 must be a number in \(0, 1\]"),
        ((float("nan"), 8), {}, "select=nan"),
        (("0.3", 8), {}, "must be a number"),
        ((0.3, 0), {}, "n_blocks=0 must be a positive integer"),
        ((0.3, 2.5), {}, "n_blocks=2.5"),
        ((0.3, 8), {"min_keep_ratio": 1.5}, "min_keep_ratio=1.5"),
        ((0.3, 8), {"min_blocks": 0}, "min_blocks=0"),
        ((0.3, 8), {"budget": "layer"}, "budget='layer'"),
    ],
)
def test_bad_arguments(args, kwargs, message):
    with pytest.raises(AdllmError, match=message):
        allocate(torch.ones(2, 2), *args, **kwargs)


@pytest.mark.parametrize("bad", [torch.zeros(2, 2), -torch.ones(2, 2),
                                 torch.tensor([[1.0, float("nan")]]), torch.ones(4)])
def test_bad_weights(bad):
    with pytest.raises(AdllmError, match="weights must"):
        allocate(bad, 0.3, 8)


def test_fast_enough_for_1024_units():
    """DESIGN: under 5 ms for 1,024 units on one CPU core (best of several, to ignore load)."""
    weights = relative_weights(_lognormal((32, 32), seed=7))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for n in (128, 512):
            best = min(_timed(allocate, weights, s, n) for s in np.linspace(0.05, 0.97, 15))
            assert best < 5e-3, f"allocate took {best * 1e3:.2f} ms at N={n}"
    finally:
        torch.set_num_threads(threads)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*map(lambda v: float(v) if isinstance(v, np.floating) else v, args))
    return time.perf_counter() - start
