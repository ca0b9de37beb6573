"""What the denoising loops share: transfer counts, top-k selection, the session contract.

Shape legend:
    B batch, L sequence length (prompt + generation), S denoising steps, V vocabulary.

Both samplers decide, at every step, how many masked positions each row commits (its *transfer
count*) and which ones (the most confident). Counts are computed once, before the loop, as
tensors on the model's device, and selection uses a sort plus a rank mask, so a row-dependent
count never has to be read back to the host inside the loop (upstream bug list §4 item 17).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class StepSession(Protocol):
    """Per-generation attention state (e.g. a sparse session), passed to the model as ``attn``.

    The loop calls ``begin_step(step, total)`` before the model call of every denoising step
    (``step`` counts 0..total-1 across all LLaDA blocks; a CFG step is one call on the
    concatenated batch) and ``stats()`` once at the end. The object itself is the model's
    attention hook (see ``adaptive_dllm.attention.api.AttentionHook``).
    """

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 key_mask: torch.Tensor | None) -> torch.Tensor: ...

    def begin_step(self, step: int, total: int) -> None: ...

    def stats(self) -> Any:
        """The session's report (a :class:`~adaptive_dllm.sparsity.stats.SparseStats` for the
        sparse session), stored as ``GenerationOutput.stats.sparse``."""
        ...


def split_evenly(n: torch.Tensor, steps: int) -> torch.Tensor:
    """Spread ``n`` tokens over ``steps`` steps, the remainder on the first steps (LLaDA).

    Args:
        n: (B,) int64 number of masked tokens per row.
        steps: number of steps.

    Returns:
        (B, S) int64 counts: ``n // steps``, plus 1 for the first ``n % steps`` steps.
    """
    step = torch.arange(steps, device=n.device)
    return n[:, None] // steps + (step[None, :] < (n % steps)[:, None]).long()


def dream_timesteps(steps: int, eps: float) -> torch.Tensor:
    """(S + 1,) float32 ``linspace(1, eps, steps + 1)`` on the CPU (Dream's noise levels).

    Computed on the CPU, as the recorded upstream runs did, so a GPU run uses the same values.
    """
    return torch.linspace(1.0, eps, steps + 1, dtype=torch.float32)


def dream_counts(n: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Dream's transfer counts for the ranked algorithms (maskgit_plus, topk_margin, entropy).

    Step i (noise level t -> s) commits ``trunc(m_i * (1 - s / t))`` tokens of the ``m_i`` still
    masked, all of them on the last step; arithmetic in float32 as upstream, so e.g. 16 masks
    over 16 steps give 0 on the first step (``int(0.999...)``).

    Upstream uses the batch mean of the mask count for every row; with equal counts per row
    (always the case for prompts without mask ids) that is exactly this per-row schedule, and
    with unequal counts upstream would re-mask committed tokens, which this schedule avoids.

    Args:
        n: (B,) int64 masked positions per row before the first step.
        timesteps: (S + 1,) float32 from :func:`dream_timesteps`.

    Returns:
        (B, S) int64 counts on ``n``'s device; row sums equal ``n``.
    """
    steps = timesteps.numel() - 1
    ratio = (1 - timesteps[1:] / timesteps[:-1]).to(n.device)  # (S,) float32
    remaining = n.to(torch.float32)
    counts = []
    for i in range(steps):
        if i == steps - 1:
            k = remaining.trunc()
        else:
            k = (remaining * ratio[i]).trunc()
        counts.append(k)
        remaining = remaining - k
    return torch.stack(counts, dim=1).long()


def select_top(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-row top-k with a row-dependent k, without reading k back to the host.

    Equivalent to ``torch.topk(confidence[b], k[b])`` for each row (up to the order among exact
    ties): rows are sorted once and the first ``k[b]`` ranks kept.

    Args:
        confidence: (B, N) float scores; ``-inf`` marks positions that must not be chosen as
            long as k does not exceed the number of finite scores.
        k: (B,) int64 counts, 0 <= k <= N.

    Returns:
        (B, N) bool, True at the chosen positions.
    """
    order = confidence.argsort(dim=-1, descending=True, stable=True)  # (B, N)
    rank = torch.arange(confidence.shape[-1], device=confidence.device)
    keep = rank[None, :] < k[:, None]  # (B, N) in sorted order
    return torch.zeros_like(keep).scatter(-1, order, keep)
