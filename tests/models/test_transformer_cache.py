"""The transformer's K/V cache hook: a refresh changes nothing; a cached step over a fresh cache
computes what the full forward computes for its window (prefix and dual, padding, GQA)."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation.cache import BlockCache
from adaptive_dllm.models import ModelConfig, Transformer


def _model(family: str = "llada") -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=50, hidden_size=32, n_layers=3, n_heads=4,
                      n_kv_heads=2, intermediate_size=64, max_seq_len=128, mask_id=49)
    return Transformer(cfg).eval()


def _inputs(B: int = 2, L: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 49, (B, L))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, :5] = False  # row 1 is left-padded
    return ids, mask


def test_refresh_is_the_plain_forward_and_stores_every_layer():
    model = _model()
    ids, mask = _inputs()
    cache = BlockCache("dual", model.config.n_layers, ids.shape[1])
    cache.begin_refresh()
    with torch.inference_mode():
        plain = model(ids, attention_mask=mask, logits_from=10)
        cached = model(ids, attention_mask=mask, logits_from=10, cache=cache)
    assert torch.equal(plain, cached)
    assert cache.nbytes() == 2 * 3 * 2 * 2 * 24 * 8 * 4  # k and v, layers, B, Hkv, L, D, fp32


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_step_on_a_fresh_cache_equals_the_full_forward(mode):
    model = _model()
    ids, mask = _inputs()
    cache = BlockCache(mode, model.config.n_layers, ids.shape[1])
    lo, hi = 12, 18
    with torch.inference_mode():
        full = model(ids, attention_mask=mask)
        cache.begin_refresh()
        model(ids, attention_mask=mask, cache=cache)
        start, stop = cache.begin_cached(lo, hi)
        assert (start, stop) == ((lo, 24) if mode == "prefix" else (lo, hi))
        window = model(ids[:, start:stop], attention_mask=mask, cache=cache)
    torch.testing.assert_close(window, full[:, start:stop], rtol=1e-5, atol=1e-5)


def test_cached_step_reads_the_cache_not_the_new_tokens_outside_its_window():
    """Dual: tokens after the window changed since the refresh; the cached step still sees their
    refresh-time K/V (the approximation); prefix recomputes them, so its window sees the change
    (its cached prefix is stale too: in a full forward the prefix would also see the change)."""
    model = _model()
    ids, mask = _inputs()
    changed = ids.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 49
    out = {}
    with torch.inference_mode():
        for mode in ("prefix", "dual"):
            cache = BlockCache(mode, model.config.n_layers, ids.shape[1])
            cache.begin_refresh()
            model(ids, attention_mask=mask, cache=cache)
            start, stop = cache.begin_cached(12, 18)
            out[mode] = model(changed[:, start:stop], attention_mask=mask, cache=cache)[:, :6]
        stale = model(ids, attention_mask=mask)[:, 12:18]
    torch.testing.assert_close(out["dual"], stale, rtol=1e-5, atol=1e-5)
    assert (out["prefix"] - stale).abs().amax() > 1e-3


def test_cache_errors_are_one_line():
    model = _model()
    ids, mask = _inputs()
    cache = BlockCache("dual", model.config.n_layers, ids.shape[1])
    with pytest.raises(AdllmError, match="refresh forward first"):
        cache.begin_cached(4, 8)
    cache.begin_refresh()
    with torch.inference_mode():
        model(ids, attention_mask=mask, cache=cache)
    cache.begin_cached(4, 8)
    with pytest.raises(AdllmError, match="does not match"), torch.inference_mode():
        model(ids[:, :3], attention_mask=mask, cache=cache)
    with pytest.raises(AdllmError, match="cache='full' is not valid"):
        BlockCache("full", 1, 4)
