"""Sampling above temperature 0 is pinned: token and position distributions, and upstream seeds.

Distribution tests draw N independent samples in one batched sampler call (one row per draw)
from a model with fixed logits, and compare the counts with the intended distribution by
Pearson's chi-square test. The assertion is ``p-value > ALPHA``: for a correct sampler and an
arbitrary seed it fails with probability ALPHA = 1e-6 (the seeds are fixed, so the outcome is
deterministic). Each test also checks that the plausible mistakes it guards against (inverted
temperature, temperature multiplied instead of divided) give a p-value far below ALPHA on the
same counts, so the test has the power to catch them.

The recorded-upstream tests replay every case of ``sampling.json`` in the reference fixtures
(seeded generations at temperature > 0, top-p, top-k and ``alg_temp``) and require identical ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from adaptive_dllm.generation import DreamOptions, LladaOptions, sample_dream, sample_llada
from adaptive_dllm.models import ModelConfig

N = 20_000
ALPHA = 1e-6
VOCAB, MASK = 10, 9
# Token 9 is the mask id; its logit is far below the others so it is (almost) never drawn.
LOGITS = torch.tensor([1.6, 1.1, 0.9, 0.4, 0.0, -0.3, -0.9, -1.4, -2.0, -30.0])


class FixedLogits(torch.nn.Module):
    """Row i of every sequence gets ``rows[i]`` (the last row repeated); records its inputs."""

    def __init__(self, rows: torch.Tensor, family: str) -> None:
        super().__init__()
        self.config = ModelConfig(family=family, vocab_size=VOCAB, hidden_size=8, n_layers=1,
                                  n_heads=1, n_kv_heads=1, intermediate_size=8, max_seq_len=64,
                                  mask_id=MASK, eos_id=0, pad_id=0)
        self.rows = rows  # (R, V)
        self.calls: list[torch.Tensor] = []

    def forward(self, ids, *, attention_mask=None, attn=None, logits_from=0):  # noqa: ANN001
        self.calls.append(ids.clone())
        B, L = ids.shape
        index = torch.arange(L).clamp(max=self.rows.shape[0] - 1)
        return self.rows[index][None].expand(B, L, VOCAB)[:, logits_from:]


def _p_value(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson chi-square p-value of ``counts`` (K,) against probabilities (K,) (all > 0)."""
    expected = expected_probs.double() * counts.sum()
    stat = ((counts.double() - expected) ** 2 / expected).sum()
    df = counts.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def _check(counts: torch.Tensor, expected: torch.Tensor, *wrong: torch.Tensor) -> None:
    support = expected > 1e-4  # categories the sampler may draw
    assert counts[~support].sum() == 0, counts
    p = _p_value(counts[support], expected[support] / expected[support].sum())
    assert p > ALPHA, f"p-value {p:.2e}: counts {counts.tolist()} vs {expected.tolist()}"
    for other in wrong:  # the test can tell the mistakes apart from the intended distribution
        keep = other > 1e-4
        other_p = _p_value(counts[keep], other[keep] / other[keep].sum()) if keep.any() else 0
        assert other_p < 1e-30 or counts[~keep].sum() > 0


def _draw_tokens(sampler: Any, options: Any, family: str) -> torch.Tensor:
    """(VOCAB,) counts of the token generated after a one-token prompt, over N rows."""
    model = FixedLogits(LOGITS[None], family)
    torch.manual_seed(1234)
    with torch.inference_mode():
        out = sampler(model, torch.zeros(N, 1, dtype=torch.long), options=options)
    return torch.bincount(out[:, 1], minlength=VOCAB)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_llada_gumbel_max_samples_softmax_of_logits_over_temperature(temperature):
    opts = LladaOptions(gen_length=1, steps=1, temperature=temperature)
    counts = _draw_tokens(sample_llada, opts, "llada")
    _check(counts, torch.softmax(LOGITS / temperature, -1),
           torch.softmax(LOGITS * temperature, -1), torch.softmax(LOGITS, -1))


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy", "topk_margin"])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_dream_temperature_samples_softmax_of_logits_over_temperature(alg, temperature):
    opts = DreamOptions(gen_length=1, steps=1, alg=alg, temperature=temperature)
    counts = _draw_tokens(sample_dream, opts, "dream")
    _check(counts, torch.softmax(LOGITS / temperature, -1),
           torch.softmax(LOGITS * temperature, -1), torch.softmax(LOGITS, -1))


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Probabilities renormalised over the smallest prefix (by rank) whose mass exceeds top_p."""
    kept = torch.zeros_like(probs)
    mass = 0.0
    for i in probs.argsort(descending=True).tolist():
        kept[i] = probs[i]
        mass += float(probs[i])
        if mass > top_p:
            break
    return kept / kept.sum()


def test_dream_top_p_samples_the_nucleus_of_the_tempered_distribution():
    # At T=0.5 the top three tokens hold 0.89 of the mass: 0.8 keeps exactly those three.
    # Filtering before the temperature, or multiplying by it, keeps more tokens.
    opts = DreamOptions(gen_length=1, steps=1, temperature=0.5, top_p=0.8)
    counts = _draw_tokens(sample_dream, opts, "dream")
    expected = _nucleus(torch.softmax(LOGITS / 0.5, -1), 0.8)
    assert int((expected > 0).sum()) == 3
    _check(counts, expected, _nucleus(torch.softmax(LOGITS * 0.5, -1), 0.8),
           _nucleus(torch.softmax(LOGITS, -1), 0.8))


def test_dream_top_k_samples_the_k_best_of_the_tempered_distribution():
    opts = DreamOptions(gen_length=1, steps=1, temperature=2.0, top_k=4)
    counts = _draw_tokens(sample_dream, opts, "dream")
    expected = torch.softmax(LOGITS / 2.0, -1)
    expected[4:] = 0
    wrong = torch.softmax(LOGITS * 2.0, -1)
    wrong[4:] = 0
    _check(counts, expected / expected.sum(), wrong / wrong.sum())


def test_dream_alg_temp_samples_positions_by_softmax_of_confidence_over_alg_temp():
    # Four masked positions with distinct top-1 probabilities (maskgit_plus confidence);
    # 4 masks over 2 steps commit int(4 * (1 - 0.5005)) = 1 position in the first step.
    alg_temp = 0.2
    rows = torch.zeros(4, VOCAB)
    rows[:, MASK] = -30.0
    rows[torch.arange(4), torch.arange(4)] = torch.tensor([3.0, 2.0, 1.2, 0.5])
    model = FixedLogits(rows, "dream")
    opts = DreamOptions(gen_length=4, steps=2, alg="maskgit_plus", alg_temp=alg_temp)
    torch.manual_seed(99)
    with torch.inference_mode():
        sample_dream(model, torch.zeros(N, 1, dtype=torch.long), options=opts)
    after_first = model.calls[1][:, 1:]  # (N, 4): the sequence the second step sees
    committed = after_first != MASK
    assert committed.sum(-1).eq(1).all()
    counts = torch.bincount(committed.int().argmax(-1), minlength=4)
    confidence = torch.softmax(rows, -1).amax(-1)  # position 1 + j reads row j
    _check(counts, torch.softmax(confidence / alg_temp, -1),
           torch.softmax(confidence * alg_temp, -1))


# ---------------------------------------------------------------------------------------------
# Seeded upstream generations at temperature > 0 (``sampling.json`` of every fixture directory)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "reference_fixtures"


def _sampling_cases() -> list[Any]:
    params = []
    for path in sorted(FIXTURES.glob("*/sampling.json")) if FIXTURES.is_dir() else []:
        for name, case in json.loads(path.read_text())["cases"].items():
            params.append(pytest.param(path.parent.name, case, id=f"{path.parent.name}-{name}"))
    return params or [pytest.param(None, None, marks=pytest.mark.skip(
        reason=f"no sampling.json under {FIXTURES} (../shared is absent)"))]


def _replay(model: Any, case: dict[str, Any]) -> torch.Tensor:
    if model.config.family == "llada":
        opts: Any = LladaOptions(gen_length=case["gen_length"], steps=case["steps"],
                                 block_length=case["block_length"],
                                 temperature=case["temperature"], remasking=case["remasking"])
        sampler: Any = sample_llada
    else:
        opts = DreamOptions(gen_length=case["gen_length"], steps=case["steps"], alg=case["alg"],
                            temperature=case["temperature"], top_p=case["top_p"],
                            top_k=case["top_k"], alg_temp=case["alg_temp"])
        sampler = sample_dream
    prompt = torch.tensor(case["prompt_ids"])
    torch.manual_seed(case["seed"])
    with torch.inference_mode():
        return sampler(model, prompt, options=opts)[:, prompt.shape[1]:]


@pytest.mark.parametrize(("directory", "case"), _sampling_cases())
def test_seeded_sampling_reproduces_upstream(fixture_model, directory, case):
    generated = _replay(fixture_model(directory), case)
    assert generated.tolist() == case["generated_ids"]
