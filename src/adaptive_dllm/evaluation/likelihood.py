"""Masked-token negative log-likelihood of a diffusion LM at a fixed mask ratio.

Shape legend: P passages, B batch, L passage length, V vocabulary, K masked positions.

Definition (what the bundled model's card reports and ``adllm eval nll`` computes):

* The text is cut into P passages of L tokens (:func:`~adaptive_dllm.evaluation.data.
  split_passages`). Every passage is scored on its own, with no padding.
* Eligible positions are all L positions, except position 0 for families whose logits are
  shifted (Dream: the output at i-1 predicts token i, so token 0 has no prediction).
* For each passage p (in order) a uniformly random permutation of its n eligible positions is
  drawn from one CPU ``torch.Generator`` seeded with ``seed``. At mask ratio r the first
  ``k = floor(r * n + 0.5)`` positions of that permutation (at least 1, at most n) are replaced by
  the mask id, all in one forward pass (LLaDA's "mask exactly k of L" evaluation). Masks
  are therefore identical on every device and batch size, and nested across ratios: the positions
  masked at 0.15 are also masked at 0.5 and 0.9.
* The score is ``-log2 p(x_i | x_unmasked)`` under the softmax over the whole vocabulary (special
  ids included), at masked positions only, after the family's logit alignment; the result is the
  sum over all masked positions of all passages divided by their number: bits per token, which
  for the byte-level bundled model is bits per byte.

This is one Monte-Carlo term of the LLaDA likelihood bound at t = r, not the bound itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.models.families import get_family
from adaptive_dllm.models.masking import mask_count, mask_orders

__all__ = ["NLLResult", "mask_count", "mask_orders", "masked_nll"]

if TYPE_CHECKING:  # pragma: no cover
    from adaptive_dllm.attention.api import AttentionHook


@dataclass(frozen=True)
class NLLResult:
    """Masked-token NLL at one mask ratio.

    Attributes:
        mask_ratio: the ratio r asked for.
        bits_per_token: mean -log2 p over all masked tokens (bits per byte for byte models).
        stderr: standard error of the per-passage means (passage-to-passage spread / sqrt(P)).
        n_masked: masked tokens scored, over all passages.
        n_passages: P.
        length: L.
        seed: the mask seed.
    """

    mask_ratio: float
    bits_per_token: float
    stderr: float
    n_masked: int
    n_passages: int
    length: int
    seed: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@torch.no_grad()
def masked_nll(
    model: nn.Module,
    passages: torch.Tensor,
    mask_ratios: Sequence[float],
    *,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    attn: AttentionHook | None = None,
) -> list[NLLResult]:
    """Masked-token NLL of ``model`` on ``passages`` at each mask ratio (see the module docstring).

    Args:
        model: a :class:`~adaptive_dllm.models.transformer.Transformer` (anything with a
            ``config`` carrying ``family``, ``mask_id``, ``vocab_size``, ``max_seq_len`` and
            ``model(ids) -> (B, L, V)`` logits). Runs on the device and in the dtype of its
            parameters; log-probabilities are computed in float32.
        passages: (P, L) int64 token ids.
        mask_ratios: ratios r in (0, 1].
        seed: mask seed.
        batch_size: passages per forward; does not change the result beyond float rounding.
        progress: show a progress bar on stderr.
        attn: attention hook passed to every forward as ``model(ids, attn=attn)``, e.g. a
            :class:`~adaptive_dllm.sparsity.session.SparseSession` of a
            ``SparseConfig(likelihood=True)`` (a fresh plan from each forward's own q/k; its
            ``stats()`` then report the realised keep ratio). None: the model's dense attention.

    Returns:
        One :class:`NLLResult` per ratio, in the order given.

    Raises:
        AdllmError: bad ratio, empty or too-long passages, passages containing the mask id.
    """
    config = model.config
    family = get_family(config.family)
    if passages.ndim != 2 or passages.numel() == 0:
        raise AdllmError(f"passages must be a non-empty (P, L) tensor, got shape {tuple(passages.shape)}")
    if batch_size < 1:
        raise AdllmError(f"batch size {batch_size} must be at least 1")
    P, L = passages.shape
    if L > config.max_seq_len:
        raise AdllmError(f"passage length {L} exceeds the model maximum of {config.max_seq_len}")
    if (passages == config.mask_id).any():
        raise AdllmError(f"the text contains the mask id {config.mask_id}; it cannot be scored")
    counts = [mask_count(L - int(family.logit_shift), r) for r in mask_ratios]
    orders = mask_orders(P, L, seed=seed, skip_first=family.logit_shift)  # (P, n)
    device = next(model.parameters()).device
    bits = torch.zeros(len(counts), P, dtype=torch.float64)  # per ratio, per passage: sum of bits

    bar = None
    if progress:
        from adaptive_dllm._progress import progress_bar  # tqdm on a terminal, lines in logs

        bar = progress_bar(len(counts) * P, desc="masked NLL", unit="passage", leave=False)
    for j, k in enumerate(counts):
        for start in range(0, P, batch_size):
            x = passages[start : start + batch_size]  # (B, L)
            where = orders[start : start + batch_size, :k]  # (B, K)
            inputs = x.scatter(1, where, config.mask_id)
            kwargs = {} if attn is None else {"attn": attn}
            logits = family.align_logits(model(inputs.to(device), **kwargs))  # (B, L, V)
            picked = logits.gather(1, where.to(device)[..., None].expand(-1, -1, logits.shape[-1]))
            logp = torch.log_softmax(picked.float(), dim=-1)  # (B, K, V)
            target = x.gather(1, where).to(device)[..., None]  # (B, K, 1)
            nats = -logp.gather(-1, target)[..., 0].double().sum(-1)  # (B,)
            bits[j, start : start + x.shape[0]] = nats.cpu() / math.log(2)
            if bar is not None:
                bar.update(x.shape[0])
    if bar is not None:
        bar.close()

    results = []
    for j, (ratio, k) in enumerate(zip(mask_ratios, counts, strict=True)):
        per_passage = bits[j] / k
        stderr = float(per_passage.std() / math.sqrt(P)) if P > 1 else float("nan")
        results.append(NLLResult(
            mask_ratio=float(ratio), bits_per_token=float(bits[j].sum() / (k * P)), stderr=stderr,
            n_masked=k * P, n_passages=P, length=L, seed=seed,
        ))
    return results
