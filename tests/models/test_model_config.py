"""ModelConfig validation and the named presets (the one copy of the real geometries)."""

from __future__ import annotations

import pytest

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.models.config import PRESETS, ModelConfig


def test_presets_carry_the_real_geometries():
    llada, dream = ModelConfig.preset("llada-8b"), ModelConfig.preset("dream-7b")
    assert (llada.n_heads, llada.n_kv_heads, llada.head_dim, llada.n_layers) == (32, 32, 128, 32)
    assert (dream.n_heads, dream.n_kv_heads, dream.head_dim, dream.qkv_bias) == (28, 4, 128, True)
    assert set(PRESETS) == {"llada-8b", "dream-7b", "llada-tiny", "dream-tiny"}


def test_preset_overrides_and_derived_head_dim():
    cfg = ModelConfig.preset("dream-7b", n_layers=2, max_seq_len=70000)
    assert (cfg.n_layers, cfg.max_seq_len, cfg.vocab_size) == (2, 70000, 152064)
    assert ModelConfig.preset("llada-tiny", hidden_size=128).head_dim == 32  # 128 / 4 heads


def test_unknown_preset_and_bad_sizes_are_one_line_errors():
    with pytest.raises(AdllmError, match="unknown model preset 'gpt2'; choose one of llada-8b"):
        ModelConfig.preset("gpt2")
    with pytest.raises(AdllmError, match="config n_layers=0 must be a positive integer"):
        ModelConfig.preset("llada-tiny", n_layers=0)
