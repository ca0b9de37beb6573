"""SparseConfig validation: bad input gives one-line AdllmErrors; defaults are valid."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.models.config import ModelConfig
from adaptive_dllm.sparsity import SparseConfig


def _config(**kw) -> ModelConfig:
    base = dict(family="dream", vocab_size=64, hidden_size=32, n_layers=2, n_heads=4,
                n_kv_heads=2, intermediate_size=64, mask_id=63)
    return ModelConfig(**{**base, **kw})


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def test_defaults_are_valid():
    cfg = SparseConfig()
    assert (cfg.select, cfg.skip, cfg.block_size, cfg.region, cfg.gqa, cfg.backend) == (
        0.3, 0.2, 128, "separate", "kv", "auto")
    assert cfg.mode == "uniform" and not cfg.is_dense
    assert SparseConfig(select=1).is_dense


@pytest.mark.parametrize("kw,needle", [
    (dict(select=0), "select"), (dict(select=1.5), "select"), (dict(select=float("nan")), "select"),
    (dict(select=True), "select"), (dict(select="0.3"), "select"),
    (dict(skip=1.0), "skip"), (dict(skip=-0.1), "skip"),
    (dict(min_keep_ratio=2), "min_keep_ratio"),
    (dict(block_size=48), "block_size"), (dict(block_size=True), "block_size"),
    (dict(region="both"), "region"), (dict(gqa="group"), "gqa"),
    (dict(backend="cuda"), "backend"), (dict(estimator="fast"), "estimator"),
    (dict(likelihood=1), "likelihood"), (dict(importance="file.safetensors"), "importance"),
])
def test_invalid_values_raise_one_line(kw, needle):
    with pytest.raises(AdllmError) as err:
        SparseConfig(**kw)
    assert needle in _one_line(err)


def test_block_size_not_supported_by_backend():
    SparseConfig(block_size=8, backend="reference")  # the oracle takes any power of two
    for backend in ("auto", "flex", "triton"):
        SparseConfig(block_size=16, backend=backend)  # the one list: kernels.support.BLOCK_SIZES
        with pytest.raises(AdllmError) as err:
            SparseConfig(block_size=8, backend=backend)
        assert backend in _one_line(err) and "16, 32, 64, 128" in str(err.value)
    with pytest.raises(AdllmError):
        SparseConfig(block_size=256)


def test_evaluations_force_a_backend_that_runs_the_block_size():
    """Evaluations force sparse attention: flex on CUDA, but gather for a block size flex does
    not run (block 8 on a GPU made `eval fidelity` exit 2 before) and on the CPU."""
    from adaptive_dllm.evaluation.fidelity import FidelitySettings
    from adaptive_dllm.sparsity.config import measuring_backend

    assert measuring_backend("cuda", 128) == "flex" and measuring_backend("cuda", 16) == "flex"
    assert measuring_backend("cuda", 8) == "gather" and measuring_backend("cpu", 128) == "gather"
    for block, want in ((8, "gather"), (64, "flex")):
        settings = FidelitySettings(block_size=block)
        assert settings.resolved_backend(torch.device("cuda")) == want
        backend = settings.resolved_backend(torch.device("cpu"))
        assert backend == "gather"
        SparseConfig(select=0.5, block_size=block, backend=want)  # the pick is a valid config


def test_importance_for_another_model_shape():
    imp = HeadImportance(scores=torch.rand(3, 4), head_kind="query", metadata={})
    cfg = SparseConfig(importance=imp, backend="reference")
    with pytest.raises(AdllmError) as err:
        cfg.new_session(_config(), 16)
    assert "(3, 4)" in _one_line(err)
    cfg.new_session(_config(n_layers=3), 16)  # fits


def test_query_units_need_query_scores():
    imp = HeadImportance(scores=torch.rand(2, 2), head_kind="kv", metadata={})
    with pytest.raises(AdllmError) as err:
        SparseConfig(importance=imp, gqa="query")
    assert "query" in _one_line(err)


def test_weights_shapes_per_unit_mode():
    imp = HeadImportance(scores=torch.rand(2, 4), head_kind="query", metadata={})
    c = _config()
    assert SparseConfig().weights(c).shape == (2, 2)
    assert SparseConfig(gqa="query").weights(c).shape == (2, 4)
    w = SparseConfig(importance=imp).weights(c)
    assert w.shape == (2, 2) and abs(float(w.mean()) - 1) < 1e-9
    assert SparseConfig(importance=imp, gqa="query").weights(c).shape == (2, 4)
    assert SparseConfig(importance=imp).describe()["importance"]["shape"] == [2, 4]
