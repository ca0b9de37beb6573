"""The cost model behind backend="auto": when sparse attention runs, and on which kernel."""

from __future__ import annotations

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
        (dict(select=0.3, seq_len=65664, device_type="cuda", sparse_steps=1), "pay back"),
        (dict(select=0.7, seq_len=65664, device_type="cuda", sparse_steps=102), "keeps too much"),
    ]
    for kwargs, needle in cases:
        d = model.decide(**kwargs)
        assert d.backend == "dense" and needle in d.reason, (kwargs, d)
