"""Head analysis of the retrieval fidelity study: attention mass on the needle, rank correlation.

Shape legend: Ly layers, H query heads, Hkv key/value heads, G = H / Hkv, L sequence length
(prompt + generated positions), A answer queries, D head dim.

The needle mass of a query head is measured in the state of the first generation step (the
prompt followed by ``gen_length`` mask tokens, dense attention): the softmax attention of the
queries at the answer positions (the first tokens of `` {answer}``, where the model writes it)
over every key, averaged over those queries, summed over

* ``block``: the key blocks of the sparse plan (``block_size``, aligned at position 0) that
  overlap the needle's tokens, which is what a plan must keep for the head to still see it;
* ``span``: the needle's own tokens.

Both lie in [0, 1] and ``span <= block <= prompt`` (``prompt``: the mass on all prompt keys).
The needle's token span comes from the item's ``meta["needle_span"]`` (characters of the prompt),
converted with the tokenizer (exact for the byte tokenizer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adaptive_dllm.attention.api import attend
from adaptive_dllm.generation.prompts import prompt_ids


def token_span(tokenizer: Any, prompt: str, span: Sequence[int]) -> tuple[list[int], int, int]:
    """(prompt ids as ``generate`` encodes them, first and end token of the char ``span``)."""
    ids = prompt_ids(tokenizer, prompt, chat=False)
    plain = tokenizer.encode(prompt, add_special_tokens=False)
    lead = len(ids) - len(plain)  # special tokens the tokenizer puts in front (BOS)
    start = lead + len(tokenizer.encode(prompt[: span[0]], add_special_tokens=False))
    end = lead + len(tokenizer.encode(prompt[: span[1]], add_special_tokens=False))
    if not 0 <= start < end <= len(ids):
        raise ValueError(f"needle span {list(span)} maps to tokens [{start}, {end}) outside the "
                         f"prompt of {len(ids)} tokens")
    return ids, start, end


class _AnswerAttention:
    """Attention hook: dense attention, plus the answer queries' mean attention row per head."""

    def __init__(self, n_layers: int, queries: Tensor) -> None:
        self.queries = queries
        self.rows: list[Tensor] = [torch.empty(0)] * n_layers  # (H, L) per layer

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        group = q.shape[1] // k.shape[1]
        qa = q[0, :, self.queries.to(q.device)].float()  # (H, A, D)
        keys = k[0].float().repeat_interleave(group, dim=0)  # (H, L, D): head h reads KV h // G
        scores = qa @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (H, A, L)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[0].to(scores.device), float("-inf"))
        self.rows[layer] = scores.softmax(-1).mean(1).cpu()  # (H, L)
        return attend(q, k, v, key_mask=key_mask)


@torch.no_grad()
def needle_mass(model: nn.Module, tokenizer: Any, prompt: str, answer: str, span: Sequence[int], *,
                gen_length: int, block_size: int) -> dict[str, Any]:
    """Per-head attention mass on the needle (module docstring) for one item.

    Returns:
        {"block", "span", "prompt": (Ly, H) float64 tensors, "needle_tokens": [start, end),
        "needle_blocks": [first, last], "answer_queries": A}.
    """
    cfg = model.config
    ids, start, end = token_span(tokenizer, prompt, span)
    n_answer = len(tokenizer.encode(f" {answer}", add_special_tokens=False))
    n_answer = max(1, min(gen_length, n_answer))
    device = next(model.parameters()).device
    x = torch.tensor([ids + [cfg.mask_id] * gen_length], device=device)
    hook = _AnswerAttention(cfg.n_layers, torch.arange(len(ids), len(ids) + n_answer))
    model(x, attn=hook)
    rows = torch.stack(hook.rows).double()  # (Ly, H, L)
    first, last = start // block_size, (end - 1) // block_size
    lo, hi = first * block_size, min(rows.shape[-1], (last + 1) * block_size)
    return {"block": rows[..., lo:hi].sum(-1), "span": rows[..., start:end].sum(-1),
            "prompt": rows[..., : len(ids)].sum(-1), "needle_tokens": [start, end],
            "needle_blocks": [first, last], "answer_queries": n_answer}


def ranks(values: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, ties sharing their mean rank (float64)."""
    v = values.double().flatten()
    order = v.argsort(stable=True)
    r = torch.empty_like(v)
    r[order] = torch.arange(1, v.numel() + 1, dtype=torch.float64)
    for value in v.unique():  # average the ranks of ties
        same = v == value
        if int(same.sum()) > 1:
            r[same] = r[same].mean()
    return r


def spearman(a: Tensor, b: Tensor) -> float | None:
    """Spearman rank correlation of two equally shaped tensors (None when one is constant)."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return None if denom == 0 else float((ra * rb).sum()) / denom


def top_heads(scores: Tensor, mass: Tensor, k: int) -> list[dict[str, Any]]:
    """The ``k`` highest-scored heads (ties by index): layer, head, score, needle mass, and the
    head's rank by needle mass (1 = most mass)."""
    flat = scores.double().flatten()
    order = flat.argsort(descending=True, stable=True)[:k].tolist()
    by_mass = (-mass.double().flatten()).argsort(stable=True).tolist()
    mass_rank = {index: r + 1 for r, index in enumerate(by_mass)}
    n_heads = scores.shape[1]
    return [{"layer": i // n_heads, "head": i % n_heads, "score": float(flat[i]),
             "needle_mass": float(mass.flatten()[i]), "mass_rank": mass_rank[i]} for i in order]


def compare(scores: Tensor, mass: Tensor, *, k: int, n_kv_heads: int) -> dict[str, Any]:
    """How an estimator's scores (Ly, H) relate to the needle mass (Ly, H): Spearman over all
    query heads and over the KV groups (scores and mass summed per group of G query heads, the
    unit the budgets use with gqa="kv"), the overlap of the top-k heads of both, and the top-k
    heads by score."""
    top_score = set(scores.flatten().double().argsort(descending=True, stable=True)[:k].tolist())
    top_mass = set(mass.flatten().double().argsort(descending=True, stable=True)[:k].tolist())
    return {"spearman": spearman(scores, mass),
            "spearman_kv": spearman(group_sums(scores, n_kv_heads), group_sums(mass, n_kv_heads)),
            "top_k": k, "top_k_overlap": len(top_score & top_mass),
            "top_heads": top_heads(scores, mass, k)}


def group_sums(values: Tensor, n_kv_heads: int) -> Tensor:
    """(Ly, H) -> (Ly, Hkv): sums over each KV head's G query heads (h // G)."""
    layers, heads = values.shape
    return values.reshape(layers, n_kv_heads, heads // n_kv_heads).sum(-1)
