"""Monte-Carlo masked log-likelihood of a continuation: LLaDA's evaluation estimator.

Shape legend: S Monte-Carlo samples, B batch (samples per forward), P prefix length,
T continuation length, L = P + T, V vocabulary.

A masked diffusion LM gives no exact ``log p(continuation | prefix)``; LLaDA's evaluation uses
its lower bound (LLaDA paper, eq. (6) / the "conditional log-likelihood" of its appendix)::

    log p(c | x) >= E_{k ~ U{1..T}} E_{M ~ U(k-subsets of c)}
                        [ (T / k) * sum_{i in M} log p(c_i | x, c with M masked) ]

estimated here as the mean of ``mc_num`` samples. Each sample j draws a mask count ``k_j`` and
masks ``k_j`` positions of the continuation only (the prefix is never masked), in one forward
pass. The mask counts are stratified, as LLaDA's evaluation does: one uniform offset ``k0``,
then ``k_j = ((k0 + floor(j * T / S)) mod T) + 1``; every ``k_j`` is still uniform on
``1..T``, so the estimate stays unbiased, and its variance falls faster than 1/S because the
counts cover 1..T evenly. The positions for a given k are a uniformly random k-subset.

Determinism: all random draws come from one CPU ``torch.Generator`` seeded with ``seed``,
restarted for every request, so

* an estimate does not depend on the batch size, the device, or the other requests, and
* the candidate continuations of one question that have equal length are scored with the same
  masks (common random numbers: their *difference*, which picks the answer, has less noise).

Families with shifted logits (Dream: the output at i-1 predicts token i) are scored through that
shift; the prefix must then be non-empty (the first token has no prediction). Upstream's Dream
harness forgot the shift (``upstream_reference.md`` §4); this module does not.

Log-probabilities are computed in float32 over the whole vocabulary; sums in float64. The result
is in nats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.models.families import get_family

if TYPE_CHECKING:  # pragma: no cover
    from adaptive_dllm.attention.api import AttentionHook

__all__ = ["estimate_loglikelihood", "estimate_loglikelihoods", "mask_counts", "sample_masks"]


def mask_counts(n: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """(S,) int64 stratified mask counts in ``1..n`` (module docstring)."""
    k0 = int(torch.randint(n, (1,), generator=generator))
    strata = torch.div(torch.arange(samples) * n, samples, rounding_mode="floor")
    return (k0 + strata) % n + 1


def sample_masks(n: int, samples: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts (S,) int64, masked (S, n) bool)``: per sample, its count and a uniformly random
    subset of that many of the n continuation positions."""
    gen = torch.Generator().manual_seed(seed)
    counts = mask_counts(n, samples, gen)
    # The rank of each position in a random order; the k lowest ranks are a uniform k-subset.
    ranks = torch.rand(samples, n, generator=gen).argsort(dim=1).argsort(dim=1)  # (S, n)
    return counts, ranks < counts[:, None]


def _check_request(config, shift: bool, prefix: Sequence[int], continuation: Sequence[int]) -> None:  # noqa: ANN001
    if not continuation:
        raise AdllmError("the continuation to score is empty; give at least one token")
    if shift and not prefix:
        raise AdllmError(f"{config.family} shifts its logits, so the first token has no prediction; "
                         "give a non-empty prefix (e.g. the BOS token)")
    length = len(prefix) + len(continuation)
    if length > config.max_seq_len:
        raise AdllmError(f"prefix + continuation = {length} tokens exceeds the model maximum of "
                         f"{config.max_seq_len}; shorten the prompt")
    if config.mask_id in prefix or config.mask_id in continuation:
        raise AdllmError(f"the text contains the mask id {config.mask_id}; it cannot be scored")


@torch.no_grad()
def estimate_loglikelihood(
    model: nn.Module,
    prefix_ids: Sequence[int],
    continuation_ids: Sequence[int],
    *,
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    attn: AttentionHook | None = None,
) -> float:
    """Monte-Carlo estimate of ``log p(continuation | prefix)`` in nats (module docstring).

    Args:
        model: a :class:`~adaptive_dllm.models.transformer.Transformer` (``config`` with
            ``family``, ``mask_id``, ``max_seq_len``; ``model(ids, attn=..., logits_from=...)``
            returns (B, L - logits_from, V) logits). Runs on its parameters' device and dtype.
        prefix_ids: the context tokens (never masked).
        continuation_ids: the T >= 1 tokens whose likelihood is estimated.
        mc_num: Monte-Carlo samples S (LLaDA's harness: 128; upstream MMLU runs used 1).
        batch_size: samples per forward; changes nothing but speed and memory.
        seed: mask seed (restarted for every request).
        attn: attention hook passed to every forward, e.g. a sparse session built for
            likelihood scoring; None: dense attention.

    Raises:
        AdllmError: empty continuation, empty prefix with shifted logits, too long, mask id in
            the text, ``mc_num`` or ``batch_size`` below 1.
    """
    return estimate_loglikelihoods(model, [(prefix_ids, continuation_ids)], mc_num=mc_num,
                                   batch_size=batch_size, seed=seed, attn=attn)[0]


@torch.no_grad()
def estimate_loglikelihoods(
    model: nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    attn: AttentionHook | None = None,
) -> list[float]:
    """:func:`estimate_loglikelihood` of every ``(prefix_ids, continuation_ids)`` request, in
    order; every request is checked before the first forward."""
    config = model.config
    shift = get_family(config.family).logit_shift
    for name, value in (("mc_num", mc_num), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdllmError(f"{name} must be an integer >= 1, got {value!r}")
    for prefix, continuation in requests:
        _check_request(config, shift, prefix, continuation)
    device = next(model.parameters()).device
    kwargs = {} if attn is None else {"attn": attn}
    results = []
    for prefix, continuation in requests:
        P, T = len(prefix), len(continuation)
        seq = torch.tensor([*prefix, *continuation], dtype=torch.long)  # (L,)
        target = seq[P:]  # (T,)
        counts, masked = sample_masks(T, mc_num, seed=seed)  # (S,), (S, T)
        total = 0.0
        for start in range(0, mc_num, batch_size):
            where = masked[start : start + batch_size]  # (B, T)
            x = seq.expand(where.shape[0], -1).clone()  # (B, L)
            x[:, P:][where] = config.mask_id
            # Row P - shift of the output predicts token P: skip the output head over the prefix.
            logits = model(x.to(device), logits_from=P - shift, **kwargs)[:, :T]  # (B, T, V)
            logp = torch.log_softmax(logits.float(), dim=-1)
            token_logp = logp.gather(-1, target.to(device).expand(where.shape[0], -1)[..., None])[..., 0]
            per_sample = (token_logp.double() * where.to(device)).sum(-1).cpu()  # (B,)
            weight = T / counts[start : start + batch_size].double()  # (B,) = 1 / mask ratio
            total += float((per_sample * weight).sum())
        results.append(total / mc_num)
    return results

