"""SparsePlan: exact per-row counts, top blocks by score, mandatory diagonal, regions."""

from __future__ import annotations

import torch

from adaptive_dllm.attention.plan import build_plan, prompt_block_count


def _plan(scores, kp, kg=None, prompt_blocks=None, bs=4):
    B, U, N, _ = scores.shape
    return build_plan(scores, torch.tensor(kp), None if kg is None else torch.tensor(kg),
                      layer=0, block_size=bs, seq_len=N * bs,
                      prompt_blocks=prompt_blocks or N, group=1)


def test_joint_rows_keep_exact_top_blocks_and_diagonal():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 3, 10, 10, generator=g)
    counts = [1, 3, 7]
    plan = _plan(scores, counts)
    dense = plan.block_mask()
    assert dense.shape == (2, 3, 10, 10)
    for u, c in enumerate(counts):
        assert torch.all(dense[:, u].sum(-1) == c)
    diag = torch.arange(10)
    assert torch.all(dense[:, :, diag, diag])  # the self block always kept
    s = scores.clone()
    s[:, :, diag, diag] = float("inf")
    for b in range(2):
        for u, c in enumerate(counts):
            for i in range(10):
                top = set(s[b, u, i].topk(c).indices.tolist())
                assert set(dense[b, u, i].nonzero().flatten().tolist()) == top
    # indices: ascending kept blocks, -1 padded to kmax
    assert plan.indices.shape == (2, 3, 10, 7) and plan.indices.dtype == torch.int32
    row = plan.indices[0, 0, 3]
    assert row[0] >= 0 and torch.all(row[1:] == -1)
    kept = plan.indices[1, 2, 5]
    assert torch.all(kept[1:] > kept[:-1])


def test_separate_regions_have_their_own_counts():
    scores = torch.rand(1, 2, 8, 8)
    plan = _plan(scores, [2, 3], [1, 2], prompt_blocks=6)
    dense = plan.block_mask()
    assert torch.equal(dense[0, :, :, :6].sum(-1), torch.tensor([[2] * 8, [3] * 8]))
    assert torch.equal(dense[0, :, :, 6:].sum(-1), torch.tensor([[1] * 8, [2] * 8]))
    assert torch.equal(plan.counts, torch.tensor([3, 5]))
    prompt, gen = plan.kept_blocks()
    assert (prompt, gen) == (8 * (2 + 3), 8 * (1 + 2))
    assert plan.total_blocks() == (2 * 8 * 6, 2 * 8 * 2)
    assert abs(plan.keep_ratio() - (40 + 24) / 128) < 1e-12


def test_prompt_block_count_straddle_counts_with_prompt():
    assert prompt_block_count(100 + 28, 28, 32) == 4  # P = 100: blocks 0..3, block 3 straddles
    assert prompt_block_count(128 + 32, 32, 32) == 4  # boundary on a block edge
    assert prompt_block_count(50, None, 32) == 2  # joint
    assert prompt_block_count(20, 16, 32) == 1  # one block holds everything


def test_tiny_sequence_single_block():
    plan = build_plan(torch.rand(1, 2, 1, 1), torch.tensor([1, 1]), None, layer=0,
                      block_size=32, seq_len=5, prompt_blocks=1, group=2)
    assert plan.block_mask().all() and plan.n_heads == 4
