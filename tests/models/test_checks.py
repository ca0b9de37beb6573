"""``models.checks``: finite weights at load (see test_checkpoints) and the first forward's
logits of any model, checked once per generation."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.models.checks import check_finite_logits, checked_first_forward


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_positive_inf_logits_are_an_error(bad):
    logits = torch.zeros(1, 4, 8)
    logits[0, 2, 5] = bad
    with pytest.raises(AdllmError, match="NaN or \\+Inf logits"):
        check_finite_logits(logits)


def test_negative_inf_rules_a_token_out_and_is_fine():
    logits = torch.zeros(1, 4, 8)
    logits[..., 0] = float("-inf")
    check_finite_logits(logits)


class _Counting:
    config = "cfg"

    def __init__(self, outputs):
        self.outputs, self.calls = list(outputs), 0

    def __call__(self, x, **kwargs):
        self.calls += 1
        return self.outputs.pop(0)


def test_only_the_first_call_is_checked_and_attributes_pass_through():
    nan = torch.full((1, 2, 3), float("nan"))
    model = checked_first_forward(_Counting([torch.zeros(1, 2, 3), nan]))
    assert model.config == "cfg"
    model(torch.zeros(1))
    assert torch.isnan(model(torch.zeros(1))).all()  # later calls are not synced or checked
    with pytest.raises(AdllmError):
        checked_first_forward(_Counting([nan]))(torch.zeros(1))


@pytest.mark.parametrize("name", ["llada_tiny", "dream_tiny"])
def test_generate_refuses_a_model_whose_logits_are_nan(fixture_model, name):
    """A model built in code (not loaded, so never checked at load) with NaN weights."""
    import copy

    import adaptive_dllm as ad

    model = copy.deepcopy(fixture_model(name))
    with torch.no_grad():
        model.norm.weight.fill_(float("nan"))
    with pytest.raises(AdllmError, match="first forward pass gave NaN"):
        ad.generate(model, None, [1, 2, 3], gen_length=4, steps=4)
