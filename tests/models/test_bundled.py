"""The bundled Shakespeare model: ships in the package, loads offline, matches its card."""

from __future__ import annotations

import json
import re

import torch

from adaptive_dllm.evaluation import masked_nll, split_passages
from adaptive_dllm.models import Transformer, load
from adaptive_dllm.models.checkpoints import BUNDLED_DIR
from adaptive_dllm.models.tokenizer import ByteTokenizer

MAX_BYTES = 10_000_000


def test_bundled_files_are_small_and_complete():
    names = {p.name for p in BUNDLED_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "MODEL_CARD.md", "heldout.txt"} <= names
    assert (BUNDLED_DIR / "model.safetensors").stat().st_size <= MAX_BYTES
    config = json.loads((BUNDLED_DIR / "config.json").read_text())
    assert config["model_type"] == "llada" and config["adllm_tokenizer"] == "bytes"


def test_load_without_argument_gives_the_bundled_model_on_cpu():
    model, tok = load(device="cpu")
    assert isinstance(model, Transformer) and isinstance(tok, ByteTokenizer)
    c = model.config
    assert (c.family, c.n_heads, c.n_kv_heads, c.max_seq_len) == ("llada", 8, 2, 1024)
    assert (c.mask_id, c.eos_id, c.vocab_size) == (tok.mask_id, tok.eos_id, 264)
    assert next(model.parameters()).dtype == torch.float32
    ids = torch.tensor([tok.encode("ROMEO:\n")])
    logits = model(ids)
    assert logits.shape == (1, 7, 264) and torch.isfinite(logits).all()


def test_bundled_model_fills_masks_with_text():
    model, tok = load(device="cpu")
    text = ("Rom.\nBut soft, what light through yonder window breaks?\n"
            "It is the east, and Juliet is the sun.\n")
    ids = torch.tensor([tok.encode(text)])
    where = torch.arange(3, ids.shape[1], 7)  # every 7th byte masked (14%)
    masked = ids.clone()
    masked[0, where] = tok.mask_id
    guess = model(masked).argmax(-1)[0, where]
    assert (guess == ids[0, where]).float().mean() >= 0.7  # a trained model, not byte noise


def test_first_passages_match_recorded_values():
    """Regression on 4 of the 64 card passages (CPU, float32); the card holds all 64."""
    model, _ = load(device="cpu")
    x = split_passages((BUNDLED_DIR / "heldout.txt").read_bytes(), 1024)[:4]
    got = [r.bits_per_token for r in masked_nll(model, x, [0.15, 0.5, 0.9])]
    expected = [0.43017, 1.60403, 4.0497]
    for g, e in zip(got, expected, strict=True):
        assert abs(g - e) < 1e-3 * e


def test_card_states_the_reproducible_numbers():
    card = (BUNDLED_DIR / "MODEL_CARD.md").read_text()
    for ratio in ("0.15", "0.5", "0.9"):
        assert re.search(rf"\|\s*{re.escape(ratio)}\s*\|\s*\d\.\d{{4}}", card), ratio
    assert "adllm eval nll" in card and "scripts/train_tiny.py" in card
