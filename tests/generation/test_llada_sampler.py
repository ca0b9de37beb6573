"""LLaDA sampler: recorded upstream cases, scripted-logits schedule, batching, padding, no sync."""

from __future__ import annotations

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation import LladaOptions, generate, sample_llada
from adaptive_dllm.generation import llada as llada_module
from adaptive_dllm.generation.schedule import split_evenly

# ---------------------------------------------------------------------------------------------
# Recorded upstream cases (../shared/reference_fixtures, every llada directory and case)


def _options(meta: dict) -> LladaOptions:
    return LladaOptions(gen_length=meta["gen_length"], steps=meta["steps"],
                        block_length=meta["block_length"], temperature=meta["temperature"],
                        cfg_scale=meta["cfg_scale"], remasking=meta["remasking"])


def _run_case(case, *, seeded: bool = True):
    meta, rec = case.meta, case.tensors
    model = case.model
    assert model.config.mask_id == meta["mask_id"]
    prompt = rec["prompt_ids"]
    mask = torch.ones_like(prompt) if meta.get("attention_mask") == "ones" else None
    history: list[torch.Tensor] = []
    if seeded and "seed" in meta:
        torch.manual_seed(meta["seed"])
    with torch.inference_mode():
        out = sample_llada(model, prompt, options=_options(meta), attention_mask=mask,
                           history=history)
    return out, history


def test_recorded_case_reproduces_upstream(llada_case):
    meta, rec = llada_case.meta, llada_case.tensors
    out, history = _run_case(llada_case)
    assert torch.equal(out, rec["output_ids"])
    assert len(history) == meta["steps"] + 1
    if "states" in rec:
        assert torch.equal(torch.stack(history), rec["states"])
    mask_id = meta["mask_id"]
    committed = [((a == mask_id) & (b != mask_id)).sum(-1).tolist()
                 for a, b in zip(history[:-1], history[1:], strict=True)]
    assert committed == meta["transfer_counts_per_step"]
    # The up-front schedule alone gives the recorded counts.
    opts = _options(meta)
    per_block = split_evenly(torch.full((meta["batch"],), opts.block_length),
                             opts.steps_per_block)
    schedule = per_block.T.tolist() * opts.num_blocks
    assert schedule == meta["transfer_counts_per_step"]


def test_recorded_random_draws_replay_without_torch_generator(llada_case, monkeypatch):
    """Cases that draw random numbers consume exactly the recorded draws, in order (one
    ``torch.rand((B, L))`` per step), so the output follows from the draws alone."""
    rec = llada_case.tensors
    draws = list(rec.get("random_draws", []))
    calls = []

    def replay(*shape, device=None, **kw):
        size = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
        calls.append(size)
        value = draws.pop(0)
        assert tuple(value.shape) == tuple(size)
        return value.to(device)

    monkeypatch.setattr(torch, "rand", replay)
    out, _ = _run_case(llada_case, seeded=False)
    assert draws == []
    assert len(calls) == (llada_case.meta["steps"] if "random_draws" in rec else 0)
    assert torch.equal(out, rec["output_ids"])


# ---------------------------------------------------------------------------------------------
# Scripted-logits model: the schedule and the remasking rule without weights

MASK = 31  # the scripted model's mask id


def _committed_per_step(history, mask_id=MASK):
    return [((a == mask_id) & (b != mask_id)).sum(-1).tolist()
            for a, b in zip(history[:-1], history[1:], strict=True)]


def test_uneven_schedule_and_confidence_order(scripted):
    P, G = 4, 16
    model = scripted(P, G)
    history: list[torch.Tensor] = []
    prompt = torch.arange(P)[None]
    out = sample_llada(model, prompt, options=LladaOptions(gen_length=G, steps=6),
                       history=history)
    assert _committed_per_step(history) == [[3], [3], [3], [3], [2], [2]]
    # Positions are committed in decreasing confidence, each with its proposed token.
    order = torch.argsort(model.scores[P:], descending=True)
    first = (history[1][0, P:] != MASK).nonzero().flatten()
    assert set(first.tolist()) == set(order[:3].tolist())
    assert torch.equal(out[0, P:], model.tokens[P:])
    assert torch.equal(out[0, :P], prompt[0])


def test_blocks_are_semi_autoregressive(scripted):
    P, G = 3, 8
    model = scripted(P, G)
    model.scores[P + 4:] += 100  # the second block is far more confident
    history: list[torch.Tensor] = []
    sample_llada(model, torch.arange(P)[None], options=LladaOptions(
        gen_length=G, steps=4, block_length=4), history=history)
    after_block_one = history[2][0, P:]
    assert (after_block_one[:4] != MASK).all() and (after_block_one[4:] == MASK).all()


def test_session_is_told_every_step_and_cfg_is_one_forward(scripted, stub_session):
    P, G = 3, 8
    model = scripted(P, G)
    session = stub_session()
    done: list[tuple[int, int]] = []
    prompt = torch.tensor([[5, 6, 7]])
    sample_llada(model, prompt, options=LladaOptions(gen_length=G, steps=4, block_length=4,
                                                     cfg_scale=1.5),
                 session=session, on_step=lambda d, t: done.append((d, t)))
    assert session.begun == [(i, 4) for i in range(4)]
    assert done == [(i + 1, 4) for i in range(4)]
    assert len(model.calls) == 4
    ids, mask, attn = model.calls[0]
    assert attn is session and mask is None
    assert ids.shape == (2, P + G)
    assert torch.equal(ids[1, :P], torch.full((P,), MASK))  # unconditional copy: prompt masked
    assert torch.equal(ids[0, :P], prompt[0])


def test_padding_is_never_masked_nor_chosen(scripted):
    P, G = 5, 4
    model = scripted(P, G)
    prompt = torch.tensor([[MASK, MASK, 1, 2, 3]])  # pad content = the mask id, on purpose
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    out = sample_llada(model, prompt, options=LladaOptions(gen_length=G, steps=2, cfg_scale=1.0),
                       attention_mask=mask)
    assert torch.equal(out[0, :P], prompt[0])
    assert (out[0, P:] != MASK).all()
    ids, model_mask, _ = model.calls[0]
    assert model_mask.shape == (2, P + G) and not model_mask[:, :2].any()
    assert torch.equal(ids[1, :2], prompt[0, :2])  # padding stays padding in the uncond copy


def test_temperature_sampling_is_seeded_and_complete(scripted):
    P, G = 2, 8
    model = scripted(P, G)
    opts = LladaOptions(gen_length=G, steps=4, block_length=4, temperature=1.0,
                        remasking="random")
    torch.manual_seed(3)
    a = sample_llada(model, torch.arange(P)[None], options=opts)
    torch.manual_seed(3)
    b = sample_llada(model, torch.arange(P)[None], options=opts)
    assert torch.equal(a, b) and (a != MASK).all()


# ---------------------------------------------------------------------------------------------
# Batching and padding with the real fixture model


def _prompts():
    return [[31, 64, 68, 121, 45, 116, 53, 56], [80, 53, 11, 114, 64], [12, 99, 7]]


@pytest.mark.parametrize("settings", [
    dict(steps=8, block_length=8),
    dict(steps=6, block_length=16),
    dict(steps=8, block_length=8, cfg_scale=1.0),
])
def test_batch_with_left_padding_equals_one_by_one(fixture_model, settings):
    model = fixture_model("llada_tiny")
    batched = generate(model, None, _prompts(), gen_length=16, **settings)
    for row, prompt in enumerate(_prompts()):
        alone = generate(model, None, prompt, gen_length=16, **settings)
        assert torch.equal(batched.ids[row], alone.ids[0]), row


def test_pad_content_never_influences_real_tokens(fixture_model):
    model = fixture_model("llada_tiny")
    rows = _prompts()
    width = max(map(len, rows))
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    outs = []
    for pad in (125, 126, 7):  # pad id, mask id, an ordinary token
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        outs.append(generate(model, None, ids, attention_mask=mask, gen_length=16, steps=8,
                             block_length=8, cfg_scale=0.5).ids)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# ---------------------------------------------------------------------------------------------
# Options and the no-sync rule


@pytest.mark.parametrize("kwargs, words", [
    (dict(steps=0), ["steps=0"]),
    (dict(gen_length=16, block_length=5), ["gen_length=16", "block_length=5"]),
    (dict(gen_length=16, block_length=8, steps=7), ["steps=7", "2"]),
    (dict(temperature=-1.0), ["temperature=-1.0"]),
    (dict(remasking="lowest"), ["remasking", "low_confidence"]),
    (dict(gen_length=True), ["gen_length=True"]),
])
def test_invalid_options_raise_one_line_errors(kwargs, words):
    with pytest.raises(AdllmError) as err:
        LladaOptions(**kwargs)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_defaults_follow_gen_length():
    o = LladaOptions(gen_length=64)
    assert (o.steps, o.block_length, o.num_blocks, o.steps_per_block) == (64, 64, 1, 64)


def test_step_loop_has_no_host_sync(assert_sync_free):
    assert_sync_free(llada_module, "sample_llada", ("_step",))
