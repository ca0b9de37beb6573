"""Prompts in, token ids out, and generated ids back to text, for :func:`generate`.

Shape legend:
    B batch, P prompt length (after left padding), G generation length.

A prompt is a string, a list of strings, a list of token ids, a list of such lists or an int64
tensor. Rows of different lengths are left-padded with the pad id and masked (0 at padding),
so a batch generates what its rows generate one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.models.config import ModelConfig

Prompt = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor


def decode(tokenizer: Any, ids: torch.Tensor, *, eos_id: int | None, mask_id: int) -> list[str]:
    """Decode (B, G) generated ids row by row: cut at the first EOS, drop mask ids."""
    texts = []
    for row in ids.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        texts.append(tokenizer.decode([t for t in row if t != mask_id], skip_special_tokens=True))
    return texts


def tokenizer_eos_id(tokenizer: Any, config: ModelConfig) -> int | None:
    eos = getattr(tokenizer, "eos_id", None)
    return config.eos_id if eos is None else eos


def _pad_id(tokenizer: Any, config: ModelConfig) -> int:
    for value in (getattr(tokenizer, "pad_id", None), config.pad_id, config.eos_id):
        if value is not None:
            return int(value)
    return 0  # padded positions are masked; their content never matters


def is_flat_ids(prompt: Any) -> bool:
    if isinstance(prompt, torch.Tensor):
        return prompt.dim() == 1
    return (isinstance(prompt, Sequence) and len(prompt) > 0
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt))


def encode_prompt(
    prompt: Prompt,
    tokenizer: Any,
    config: ModelConfig,
    *,
    chat: bool,
    attention_mask: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt -> ((B, P) int64 ids, (B, P) bool mask or None when no row is padded)."""
    texts = [prompt] if isinstance(prompt, str) else None
    if texts is None and isinstance(prompt, Sequence) and prompt and all(
            isinstance(p, str) for p in prompt):
        texts = list(prompt)
    if texts is not None:
        if tokenizer is None:
            raise AdllmError("this model has no tokenizer; pass token ids instead of text")
        if attention_mask is not None:
            raise AdllmError("attention_mask is built from text prompts; pass it only with ids")
        rows = [_tokenize(t, tokenizer, chat) for t in texts]
        return _left_pad(rows, _pad_id(tokenizer, config))
    if chat:
        raise AdllmError("chat=True needs text prompts; got token ids")

    if isinstance(prompt, torch.Tensor):
        if prompt.dtype == torch.bool or prompt.is_floating_point() or prompt.is_complex():
            raise AdllmError(f"prompt tensor must hold integer token ids, got {prompt.dtype}")
        ids = prompt.long()
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise AdllmError(f"prompt tensor must be (B, P) or (P,), got {tuple(prompt.shape)}")
    elif is_flat_ids(prompt):
        ids = torch.tensor([list(prompt)], dtype=torch.long)
    elif (isinstance(prompt, Sequence) and prompt
          and all(is_flat_ids(r) and not isinstance(r, torch.Tensor) for r in prompt)):
        if attention_mask is None:
            return _left_pad([list(r) for r in prompt], _pad_id(tokenizer, config))
        lengths = {len(r) for r in prompt}
        if len(lengths) != 1:
            raise AdllmError("with attention_mask, every prompt row must already have one length")
        ids = torch.tensor([list(r) for r in prompt], dtype=torch.long)
    else:
        raise AdllmError(
            f"prompt must be a string, a list of strings, a list of token ids, a list of such "
            f"lists or an int64 tensor; got {type(prompt).__name__}"
            + (" (empty)" if isinstance(prompt, Sequence) and not prompt else "")
        )
    if ids.numel() == 0:
        raise AdllmError("prompt is empty; give at least one token")
    ids = ids.cpu()
    if int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size:
        raise AdllmError(
            f"prompt token ids must be in [0, {config.vocab_size}); got ids from "
            f"{int(ids.min())} to {int(ids.max())}"
        )
    mask = None
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask).cpu()
        if mask.dim() == 1:
            mask = mask[None]
        if tuple(mask.shape) != tuple(ids.shape):
            raise AdllmError(
                f"attention_mask shape {tuple(mask.shape)} must equal the prompt's "
                f"{tuple(ids.shape)}"
            )
        mask = _check_left_padded(mask.bool())
    return ids, mask


def prompt_ids(tokenizer: Any, text: str, *, chat: bool) -> list[int]:
    """``text``'s token ids as :func:`~adaptive_dllm.generation.api.generate` encodes a prompt
    (one user turn of the chat template when ``chat``)."""
    if chat:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 add_generation_prompt=True)
        # The template already writes the special tokens (BOS, role headers).
        return list(tokenizer.encode(rendered, add_special_tokens=False))
    return list(tokenizer.encode(text))


def _tokenize(text: str, tokenizer: Any, chat: bool) -> list[int]:
    ids = prompt_ids(tokenizer, text, chat=chat)
    if not ids:
        raise AdllmError(f"prompt {text!r} encodes to no tokens; give a non-empty prompt")
    return ids


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if any(len(r) == 0 for r in rows):
        raise AdllmError("a prompt is empty; give at least one token per prompt")
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
    if all(len(r) == width for r in rows):
        return ids, None
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, mask


def _check_left_padded(mask: torch.Tensor) -> torch.Tensor | None:
    """Validate a (B, P) bool mask (zeros only before ones, >= 1 real token per row)."""
    if not bool(mask[:, -1].all()):
        raise AdllmError("attention_mask: every row needs its last prompt position real "
                         "(padding goes on the left)")
    if bool((mask[:, 1:].long() < mask[:, :-1].long()).any()):
        raise AdllmError("attention_mask must be left padding: zeros before ones in every row")
    return None if bool(mask.all()) else mask
