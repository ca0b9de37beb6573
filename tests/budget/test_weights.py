"""relative_weights: mean 1, positivity, ordering, invariances and the awkward-input contract."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_dllm.budget import relative_weights, uniform_weights
from adaptive_dllm.budget.weights import NORMALIZATIONS
from adaptive_dllm.errors import AdllmError


def _scores(seed: int, shape: tuple[int, int] = (6, 8)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@st.composite
def score_tensors(draw, max_layers: int = 6, max_heads: int = 8) -> torch.Tensor:
    layers = draw(st.integers(1, max_layers))
    heads = draw(st.integers(1, max_heads))
    seed = draw(st.integers(0, 2**31 - 1))
    return _scores(seed, (layers, heads)) * draw(st.floats(1e-3, 1e3))


@settings(max_examples=60, deadline=None)
@given(score_tensors(), st.sampled_from(NORMALIZATIONS), st.floats(0.0, 0.99), st.booleans())
def test_mean_is_one_and_weights_positive(scores, normalize, scale, invert):
    w = relative_weights(scores, normalize=normalize, scale=scale, invert=invert)
    assert w.shape == scores.shape and w.dtype == torch.float64
    assert abs(float(w.mean()) - 1.0) < 1e-12
    assert bool((w > 0).all())
    # Before the mean normalisation weights lie in [1 - scale, 1 + scale].
    assert float(w.max() / w.min()) <= (1 + scale) / (1 - scale) + 1e-9


@settings(max_examples=40, deadline=None)
@given(score_tensors(), st.sampled_from(NORMALIZATIONS), st.floats(0.01, 100.0),
       st.floats(-100.0, 100.0))
def test_invariant_to_positive_rescaling_and_shift(scores, normalize, factor, shift):
    base = relative_weights(scores, normalize=normalize)
    moved = relative_weights(scores * factor + shift, normalize=normalize)
    torch.testing.assert_close(moved, base, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalize", ["global_percentile", "global", "rank"])
def test_more_important_gets_more_and_invert_reverses(normalize):
    scores = _scores(1).flatten()
    order = scores.argsort()
    w = relative_weights(scores.view(6, 8), normalize=normalize).flatten()[order]
    assert bool((w.diff() >= -1e-15).all())
    inv = relative_weights(scores.view(6, 8), normalize=normalize, invert=True).flatten()[order]
    assert bool((inv.diff() <= 1e-15).all())


def test_global_matches_upstream_formula():
    scores = _scores(2)
    norm = (scores - scores.min()) / (scores.max() - scores.min())
    expected = 1 + (2 / 3) * 2 * (norm - 0.5)
    torch.testing.assert_close(relative_weights(scores, normalize="global"),
                               expected / expected.mean())


def test_percentile_saturates_outliers():
    scores = _scores(3, (10, 20))
    w = relative_weights(scores).flatten()
    # At least 5% of units sit exactly at each extreme weight.
    assert int((w == w.max()).sum()) >= 10 and int((w == w.min()).sum()) >= 10


def test_per_layer_spans_each_layer():
    scores = _scores(4) + torch.arange(6, dtype=torch.float64)[:, None] * 100  # layer offsets
    w = relative_weights(scores, normalize="per_layer", scale=0.5)
    ratio = w.max(dim=1).values / w.min(dim=1).values
    torch.testing.assert_close(ratio, torch.full((6,), 3.0, dtype=torch.float64))


def test_rank_ties_share_the_mean_rank():
    scores = torch.tensor([[0.0, 1.0, 1.0, 5.0]])
    w = relative_weights(scores, normalize="rank")
    assert w[0, 1] == w[0, 2]
    torch.testing.assert_close(w[0, 1] - w[0, 0], w[0, 3] - w[0, 2])


def test_scale_zero_is_uniform():
    torch.testing.assert_close(relative_weights(_scores(5), scale=0.0), uniform_weights(6, 8))


# -- awkward inputs --------------------------------------------------------------------------
def test_nan_becomes_the_median_with_a_warning(caplog):
    scores = torch.tensor([[1.0, 2.0, float("nan"), 4.0, 3.0]])
    with caplog.at_level(logging.WARNING):
        w = relative_weights(scores, normalize="global")
    assert "1 NaN by the median 2.5" in caplog.text
    torch.testing.assert_close(w, relative_weights(torch.tensor([[1.0, 2.0, 2.5, 4.0, 3.0]]),
                                                   normalize="global"))


def test_inf_is_clipped_to_the_finite_range_with_a_warning(caplog):
    scores = torch.tensor([[1.0, float("inf"), float("-inf"), 4.0]])
    with caplog.at_level(logging.WARNING):
        w = relative_weights(scores, normalize="global")
    assert "+Inf" in caplog.text and "-Inf" in caplog.text
    torch.testing.assert_close(w, relative_weights(torch.tensor([[1.0, 4.0, 1.0, 4.0]]),
                                                   normalize="global"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_no_finite_score_is_an_error(bad):
    with pytest.raises(AdllmError, match="no finite value"):
        relative_weights(torch.full((3, 4), bad))


def test_negative_scores_are_used_as_they_are(caplog):
    scores = _scores(6) - 10.0  # all negative
    with caplog.at_level(logging.WARNING):
        w = relative_weights(scores)
    assert caplog.text == ""
    torch.testing.assert_close(w, relative_weights(scores + 20.0))


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_all_equal_scores_give_uniform_weights_with_a_warning(value, normalize, caplog):
    with caplog.at_level(logging.WARNING):
        w = relative_weights(torch.full((4, 5), value), normalize=normalize)
    assert "every unit gets weight 1" in caplog.text
    assert torch.equal(w, uniform_weights(4, 5))


def test_constant_layer_in_per_layer_mode_gets_the_middle_weight():
    scores = _scores(7, (3, 4))
    scores[1] = 2.0
    w = relative_weights(scores, normalize="per_layer", scale=0.5)
    assert torch.equal(w[1], torch.full((4,), w[1, 0].item(), dtype=torch.float64))
    # The middle weight: halfway between the extremes of a layer that spans the full range.
    torch.testing.assert_close(w[1, 0], (w[0].max() + w[0].min()) / 2)


# -- GQA -------------------------------------------------------------------------------------
def test_query_head_scores_average_to_kv_heads():
    scores = _scores(8, (28, 28))  # Dream: 28 query heads, 4 KV heads
    w = relative_weights(scores, group_size=7)
    assert w.shape == (28, 4)
    torch.testing.assert_close(w, relative_weights(scores.view(28, 4, 7).mean(-1)))
    w_sum = relative_weights(scores.view(28, 4, 7).sum(-1))  # sum == mean after normalising
    torch.testing.assert_close(w, w_sum)


def test_max_reduce_and_per_query_head_mode():
    scores = _scores(9, (4, 8))
    torch.testing.assert_close(relative_weights(scores, group_size=4, reduce="max"),
                               relative_weights(scores.view(4, 2, 4).amax(-1)))
    q = relative_weights(scores, group_size=4, gqa="query")
    torch.testing.assert_close(q, relative_weights(scores))


def test_group_size_must_divide_heads():
    with pytest.raises(AdllmError, match="not a multiple of group_size=3"):
        relative_weights(_scores(0, (2, 8)), group_size=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": 1.0}, "scale=1.0 must be in"),
        ({"scale": -0.1}, "scale=-0.1 must be in"),
        ({"normalize": "zscore"}, "normalize='zscore'"),
        ({"gqa": "both"}, "gqa='both'"),
        ({"gqa": "q"}, "gqa='q' must be 'kv' .* or 'query'"),  # one spelling, as the CLI's
        ({"group_size": 0}, "group_size=0"),
        ({"reduce": "sum"}, "reduce='sum'"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(AdllmError, match=message):
        relative_weights(_scores(0), **kwargs)


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(2, 0), torch.zeros(2, 2, 2)])
def test_bad_shapes(bad):
    with pytest.raises(AdllmError, match=r"shape \(layers, heads\)"):
        relative_weights(bad)
