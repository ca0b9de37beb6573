"""``attend``'s input checks: one line naming the shapes, for every backend, before any kernel.

Found by an audit: v shorter than k silently broadcast into a wrong result, and other mismatches
surfaced as raw torch errors.
"""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.attention.api import attend
from adaptive_dllm.errors import AdllmError


def tensors(b=1, h=4, hkv=2, lq=32, lk=32, d=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, lq, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, lk, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, lk, d, generator=g, dtype=dtype)
    return q, k, v


def test_valid_gqa_and_a_query_window_pass_the_checks_and_match_the_formula():
    q, k, v = tensors(lq=8)
    mask = torch.ones(1, 32, dtype=torch.bool)
    mask[0, :3] = False  # left padding
    out = attend(q, k, v, key_mask=mask)
    kk, vv = (t.repeat_interleave(2, dim=1) for t in (k, v))  # GQA: 2 query heads per KV head
    scores = (q @ kk.transpose(-1, -2)) / q.shape[-1] ** 0.5
    want = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1) @ vv
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, words", [
    (lambda q, k, v: (q, k, v[:, :, :16]), "must have one shape"),
    (lambda q, k, v: (q, k, v[:, :, :1]), "must have one shape"),
    (lambda q, k, v: (q, k[..., :8], v[..., :8]), "does not fit"),
    (lambda q, k, v: (q[:, :3], k, v), "does not fit"),
    (lambda q, k, v: (torch.cat([q, q]), k, v), "does not fit"),
    (lambda q, k, v: (q, k.double(), v.double()), "dtypes differ"),
    (lambda q, k, v: (q[0], k, v), "4-d"),
])
def test_mismatches_are_one_line_errors(change, words):
    q, k, v = change(*tensors())
    with pytest.raises(AdllmError, match=words) as err:
        attend(q, k, v)
    assert "\n" not in str(err.value)


def test_key_mask_must_match_batch_and_key_length():
    q, k, v = tensors()
    with pytest.raises(AdllmError, match=r"key_mask \(1, 16\) must be"):
        attend(q, k, v, key_mask=torch.ones(1, 16, dtype=torch.bool))
