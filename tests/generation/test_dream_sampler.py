"""Dream sampler: recorded upstream cases, scripted-logits schedule, batching, padding, no sync."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation import DreamOptions, generate, sample_dream
from adaptive_dllm.generation import dream as dream_module
from adaptive_dllm.generation.schedule import dream_counts, dream_timesteps

# ---------------------------------------------------------------------------------------------
# Recorded upstream cases (../shared/reference_fixtures, every dream directory and case)


def _options(meta: dict) -> DreamOptions:
    return DreamOptions(gen_length=meta["max_new_tokens"], steps=meta["steps"], alg=meta["alg"],
                        eps=meta["eps"], temperature=meta["temperature"], top_p=meta["top_p"],
                        top_k=meta["top_k"], alg_temp=meta["alg_temp"])


def _run_case(case, *, seeded: bool = True):
    meta, rec = case.meta, case.tensors
    history: list[torch.Tensor] = []
    if seeded and "seed" in meta:
        torch.manual_seed(meta["seed"])
    with torch.inference_mode():
        out = sample_dream(case.model, rec["prompt_ids"], options=_options(meta), history=history)
    return out, history


def test_recorded_case_reproduces_upstream(dream_case):
    meta, rec = dream_case.meta, dream_case.tensors
    mask_id = dream_case.model.config.mask_id
    out, history = _run_case(dream_case)
    assert torch.equal(out, rec["output_ids"])
    assert len(history) == meta["steps"] + 1
    if "states" in rec:
        assert torch.equal(torch.stack(history), rec["states"])
    committed = torch.stack([((a == mask_id) & (b != mask_id)).sum(-1)
                             for a, b in zip(history[:-1], history[1:], strict=True)])  # (S, B)
    recorded = torch.tensor(meta["transfer_counts_per_step"])
    if meta["alg"] == "origin":
        assert committed.sum(-1).tolist() == recorded.tolist()
    else:  # per row; upstream commits the same count in every row
        assert torch.equal(committed, recorded[:, None].expand_as(committed))
        # The up-front schedule alone gives the recorded counts.
        timesteps = dream_timesteps(meta["steps"], meta["eps"])
        n = torch.full((meta["batch"],), meta["max_new_tokens"])
        assert torch.equal(dream_counts(n, timesteps).T, committed)
    if "timesteps" in rec:
        assert torch.equal(dream_timesteps(meta["steps"], meta["eps"]), rec["timesteps"])


def test_recorded_random_draws_replay_without_torch_generator(dream_case, monkeypatch):
    """``origin`` consumes exactly the recorded draws: one ``torch.rand(n_masked)`` per step."""
    rec = dream_case.tensors
    flat = rec.get("random_draws", torch.empty(0))
    sizes = rec.get("random_draw_counts", torch.empty(0, dtype=torch.long)).tolist()
    chunks = list(flat.split(sizes)) if sizes else []
    calls = []

    def replay(*shape, device=None, **kw):
        calls.append(shape)
        value = chunks.pop(0)
        assert shape == (value.numel(),)
        return value.to(device)

    monkeypatch.setattr(torch, "rand", replay)
    out, _ = _run_case(dream_case, seeded=False)
    assert chunks == [] and len(calls) == len(sizes)
    assert torch.equal(out, rec["output_ids"])


# ---------------------------------------------------------------------------------------------
# Scripted-logits model: the schedule, the shift and the ranking without weights

MASK = 31  # the scripted model's mask id


def _committed_per_step(history):
    return [((a == MASK) & (b != MASK)).sum(-1).tolist()
            for a, b in zip(history[:-1], history[1:], strict=True)]


def test_first_step_commits_nothing_with_as_many_steps_as_masks(scripted):
    P, G = 3, 16
    model = scripted(P, G, "dream")
    history: list[torch.Tensor] = []
    sample_dream(model, torch.arange(P)[None], options=DreamOptions(gen_length=G, steps=G),
                 history=history)
    counts = [c[0] for c in _committed_per_step(history)]
    assert counts[0] == 0 and counts[-1] == 2 and sum(counts) == G


def test_logits_are_shifted_and_ranked_by_confidence(scripted):
    P, G = 4, 6
    model = scripted(P, G, "dream")
    history: list[torch.Tensor] = []
    out = sample_dream(model, torch.arange(P)[None],
                       options=DreamOptions(gen_length=G, steps=3, alg="maskgit_plus"),
                       history=history)
    # Position i takes the proposal of model row i-1.
    assert torch.equal(out[0, P:], model.tokens[P - 1:P + G - 1])
    # The first commits are the positions whose (shifted) rows are most confident.
    first = history[1][0, P:] != MASK
    k = int(first.sum())
    expected = torch.argsort(model.scores[P - 1:P + G - 1], descending=True)[:k]
    assert set(first.nonzero().flatten().tolist()) == set(expected.tolist())


def test_session_and_progress_are_told_every_step(scripted, stub_session):
    model = scripted(2, 8, "dream")
    session = stub_session()
    done: list[tuple[int, int]] = []
    sample_dream(model, torch.tensor([[1, 2]]), options=DreamOptions(gen_length=8, steps=5),
                 session=session, on_step=lambda d, t: done.append((d, t)))
    assert session.begun == [(i, 5) for i in range(5)]
    assert done == [(i + 1, 5) for i in range(5)]
    assert all(call[2] is session for call in model.calls)


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "topk_margin", "entropy"])
def test_padding_is_never_masked_nor_chosen(scripted, alg):
    P, G = 5, 6
    model = scripted(P, G, "dream")
    prompt = torch.tensor([[MASK, MASK, 1, 2, 3]])  # pad content = the mask id, on purpose
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    torch.manual_seed(0)
    out = sample_dream(model, prompt, options=DreamOptions(gen_length=G, steps=3, alg=alg),
                       attention_mask=mask)
    assert torch.equal(out[0, :P], prompt[0])
    assert (out[0, P:] != MASK).all()
    assert not model.calls[0][1][0, :2].any()


def test_mask_tokens_inside_the_prompt_are_filled(scripted):
    model = scripted(4, 4, "dream")
    out = sample_dream(model, torch.tensor([[1, MASK, 2, 3]]),
                       options=DreamOptions(gen_length=4, steps=2))
    assert (out != MASK).all()
    assert out[0, 1] == model.tokens[0]  # shifted: position 1 reads row 0
    assert torch.equal(out[0, 4:], model.tokens[3:7])


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("extra", [dict(temperature=0.7), dict(temperature=0.7, top_p=0.9),
                                   dict(temperature=1.0, top_k=5), dict(alg_temp=0.5)])
def test_sampling_is_seeded_and_complete(fixture_model, alg, extra):
    model = fixture_model("dream_tiny")
    prompt = torch.tensor([[15, 65, 61, 50], [59, 46, 79, 125]])
    opts = DreamOptions(gen_length=8, steps=4, alg=alg, **extra)
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        outs.append(sample_dream(model, prompt, options=opts))
    assert torch.equal(outs[0], outs[1])
    assert (outs[0] != model.config.mask_id).all()


def test_top_p_and_top_k_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    lowest = torch.finfo(torch.float32).min
    probs = logits.softmax(-1)[0]  # 0.64, 0.23, 0.09, ...
    kept = dream_module._filter(logits, DreamOptions(top_p=0.7)) > lowest
    assert kept.tolist() == [[True, True, False, False, False]]  # 0.64 < 0.7 -> keep the next
    kept = dream_module._filter(logits, DreamOptions(top_p=float(probs[0]) - 1e-3)) > lowest
    assert kept.tolist() == [[True, False, False, False, False]]
    kept = dream_module._filter(logits, DreamOptions(top_k=3)) > lowest
    assert kept.tolist() == [[True, True, True, False, False]]
    assert torch.equal(dream_module._filter(logits, DreamOptions(top_k=99)), logits)


# ---------------------------------------------------------------------------------------------
# Batching and padding with the real fixture model


def _prompts():
    return [[15, 65, 61, 50, 145, 117, 8, 95], [59, 46, 79, 125, 110], [12, 99, 7]]


@pytest.mark.parametrize("settings", [
    dict(steps=8, alg="entropy"),
    dict(steps=16, alg="maskgit_plus"),
    dict(steps=5, alg="topk_margin", top_k=50),
])
def test_batch_with_left_padding_equals_one_by_one(fixture_model, settings):
    model = fixture_model("dream_tiny")
    batched = generate(model, None, _prompts(), gen_length=16, **settings)
    for row, prompt in enumerate(_prompts()):
        alone = generate(model, None, prompt, gen_length=16, **settings)
        assert torch.equal(batched.ids[row], alone.ids[0]), row


def test_pad_content_never_influences_real_tokens(fixture_model):
    model = fixture_model("dream_tiny")
    rows = _prompts()
    width = max(map(len, rows))
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    outs = []
    for pad in (148, 150, 7):  # pad id, mask id, an ordinary token
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        outs.append(generate(model, None, ids, attention_mask=mask, gen_length=16, steps=8,
                             alg="entropy").ids)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# ---------------------------------------------------------------------------------------------
# Options and the no-sync rule


@pytest.mark.parametrize("kwargs, words", [
    (dict(steps=0), ["steps=0"]),
    (dict(alg="greedy"), ["alg", "maskgit_plus"]),
    (dict(eps=0.0), ["eps=0.0"]),
    (dict(eps=1.0), ["eps=1.0"]),
    (dict(top_p=0.0), ["top_p=0.0"]),
    (dict(top_k=0), ["top_k=0"]),
    (dict(temperature=float("nan")), ["temperature=nan"]),
    (dict(alg_temp=-0.1), ["alg_temp=-0.1"]),
])
def test_invalid_options_raise_one_line_errors(kwargs, words):
    with pytest.raises(AdllmError) as err:
        DreamOptions(**kwargs)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_defaults_are_documented_values():
    o = DreamOptions(gen_length=32)
    assert (o.steps, o.alg, o.eps, o.temperature, o.top_p, o.top_k, o.alg_temp) == (
        32, "maskgit_plus", 1e-3, 0.0, None, None, None)


def test_step_loop_has_no_host_sync(assert_sync_free):
    # _sample_rows / _masked_count are the documented exceptions (temperature > 0, origin).
    assert_sync_free(dream_module, "sample_dream",
                     ("_maskable", "_filter", "_propose", "_confidence", "_ranked_step",
                      "_origin_step"))
    for name in ("_sample_rows", "_masked_count"):
        assert "Sync exception" in getattr(dream_module, name).__doc__
