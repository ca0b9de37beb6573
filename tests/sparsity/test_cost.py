"""The cost model behind backend="auto": when sparse attention runs, and on which kernel."""

from __future__ import annotations

import pytest

from adaptive_dllm.sparsity.cost import CostModel


def test_long_cuda_runs_pay_off_on_the_sparse_backend():
    d = CostModel().decide(select=0.3, seq_len=65664, device_type="cuda", sparse_steps=102)
    assert d.backend == "triton" and "102 sparse steps" in d.reason
    d = CostModel(sparse_backend="flex").decide(select=0.3, seq_len=65664, device_type="cuda",
                                                sparse_steps=102)
    assert d.backend == "flex"
    # 4k prompts gained 1.04-1.06x end to end with the triton kernel: sparse from there on
    assert CostModel().decide(select=0.3, seq_len=4224, device_type="cuda",
                              sparse_steps=102).backend == "triton"


def test_dense_where_sparse_cannot_pay_off():
    model = CostModel()
    cases = [
        (dict(select=1.0, seq_len=65664, device_type="cuda", sparse_steps=102), "select=1"),
        (dict(select=0.3, seq_len=65664, device_type="cpu", sparse_steps=102), "cpu"),
        (dict(select=0.3, seq_len=2176, device_type="cuda", sparse_steps=102), "shortest length"),
        (dict(select=0.3, seq_len=65664, device_type="cuda", sparse_steps=0), "no sparse step"),
        (dict(select=0.3, seq_len=16512, device_type="cuda", sparse_steps=1), "pay back"),
        (dict(select=0.8, seq_len=65664, device_type="cuda", sparse_steps=102), "keeps too much"),
        # at 4k a kept block costs ~2.6 dense ones (efficiency 0.38): select 0.5 would be slower
        (dict(select=0.5, seq_len=4224, device_type="cuda", sparse_steps=102), "keeps too much"),
        # ... and the plan build costs ~5 dense attentions, which 5 sparse steps cannot repay
        (dict(select=0.3, seq_len=4224, device_type="cuda", sparse_steps=5), "pay back"),
    ]
    for kwargs, needle in cases:
        d = model.decide(**kwargs)
        assert d.backend == "dense" and needle in d.reason, (kwargs, d)


def test_efficiency_and_build_cost_follow_the_measured_points():
    from adaptive_dllm.sparsity.cost import _interpolate

    pts = ((4096, 0.4), (16384, 0.6))
    assert _interpolate(pts, 1000) == 0.4 and _interpolate(pts, 10**6) == 0.6
    assert _interpolate(pts, 8192) == pytest.approx(0.5)  # halfway in log(tokens)


def test_malformed_points_are_one_line_errors():
    from adaptive_dllm.errors import AdllmError

    for bad in ((), ((16384, 0.6), (4096, 0.4)), ((4096, 0.0),)):
        with pytest.raises(AdllmError, match="CostModel.efficiency="):
            CostModel(efficiency=bad)
