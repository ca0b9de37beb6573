"""The public ``generate``: prompt forms, options, validation, decoding, seeds, sessions, stats."""

from __future__ import annotations

import pytest
import torch

import adaptive_dllm as ad
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation import generate, sample_dream, sample_llada
from adaptive_dllm.generation.api import decode, make_options

MASK, EOS = 31, 30  # the scripted model's ids


class CharTokenizer:
    """a..z <-> 0..25; EOS 30 is the end of text; the chat template wraps the prompt."""

    eos_id, pad_id, mask_id, bos_id = EOS, EOS, MASK, None

    def encode(self, text, *, add_special_tokens=True):
        return [ord(c) - 97 for c in text if c.isalpha()]

    def decode(self, ids, *, skip_special_tokens=True):
        return "".join(chr(97 + i) if i < 26 else ("" if skip_special_tokens else "#")
                       for i in ids)

    def apply_chat_template(self, messages, *, add_generation_prompt=True):
        return "user" + messages[0]["content"] + ("asst" if add_generation_prompt else "")


def test_public_names_are_exported():
    assert ad.generate is generate
    assert ad.GenerationOutput.__name__ == "GenerationOutput"


# ---------------------------------------------------------------------------------------------
# Prompt forms and decoding


def test_text_prompts_are_tokenised_left_padded_and_decoded(scripted):
    model = scripted(8, 8)
    tok = CharTokenizer()
    one = generate(model, tok, "abc", gen_length=8, steps=4)
    assert isinstance(one.text, str)
    assert one.sequences.shape == (1, 3 + 8) and one.ids.shape == (1, 8)
    batch = generate(model, tok, ["abc", "hello"], gen_length=8, steps=4)
    assert isinstance(batch.text, list) and len(batch.text) == 2
    assert batch.sequences.shape == (2, 5 + 8)
    assert batch.sequences[0, :2].tolist() == [EOS, EOS]  # left padding with the pad id
    ids, mask, _ = model.calls[-1]
    assert mask[0].tolist()[:3] == [False, False, True] and mask[1].all()


def test_chat_wraps_the_prompt_in_the_template(scripted):
    model = scripted(12, 4)
    out = generate(model, CharTokenizer(), "hi", chat=True, gen_length=4, steps=2)
    assert out.sequences.shape[1] == len("userhiasst") + 4


@pytest.mark.parametrize("prompt, single", [
    ([1, 2, 3], True),
    (torch.tensor([1, 2, 3]), True),
    ([[1, 2, 3]], False),
    (torch.tensor([[1, 2, 3], [4, 5, 6]]), False),
    ([[1, 2, 3], [4]], False),
])
def test_id_prompts(scripted, prompt, single):
    model = scripted(4, 4)
    out = generate(model, CharTokenizer(), prompt, gen_length=4, steps=2)
    assert isinstance(out.text, str) == single
    assert out.ids.shape[1] == 4
    assert generate(model, None, prompt, gen_length=4, steps=2).text is None


def test_decode_cuts_at_first_eos_and_drops_masks():
    ids = torch.tensor([[0, MASK, 1, EOS, 2, EOS], [3, 4, MASK, 5, 6, 7]])
    assert decode(CharTokenizer(), ids, eos_id=EOS, mask_id=MASK) == ["ab", "defgh"]


# ---------------------------------------------------------------------------------------------
# Options and validation


def test_unknown_option_lists_the_valid_ones(scripted):
    with pytest.raises(AdllmError, match="'alg' is not valid for the llada sampler.*remasking"):
        generate(scripted(2, 4), None, [1, 2], alg="entropy")
    with pytest.raises(AdllmError, match="'remasking' is not valid for the dream sampler.*top_k"):
        generate(scripted(2, 4, "dream"), None, [1, 2], remasking="random")
    with pytest.raises(AdllmError, match="'sampling_alg' is not valid.*called alg here"):
        make_options("dream", sampling_alg="entropy")


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_max_new_tokens_is_an_alias_of_gen_length(scripted, family):
    assert make_options(family, max_new_tokens=16).gen_length == 16
    out = generate(scripted(2, 4, family), None, [1, 2], max_new_tokens=4, steps=4)
    assert out.ids.shape == (1, 4) and out.stats["gen_length"] == 4
    with pytest.raises(AdllmError, match="gen_length or max_new_tokens"):
        make_options(family, max_new_tokens=16, gen_length=16)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_too_long_names_both_numbers(scripted, family):
    with pytest.raises(AdllmError) as err:
        generate(scripted(2, 4, family), None, list(range(20)), gen_length=48)
    message = str(err.value)
    assert "20" in message and "48" in message and "64" in message and "\n" not in message


@pytest.mark.parametrize("prompt, kwargs, pattern", [
    ("abc", {}, "no tokenizer"),
    ([1, 2], {"chat": True}, "chat=True needs text"),
    ([1, 99], {}, r"\[0, 32\)"),
    ([], {}, "empty"),
    (torch.tensor([[1.0, 2.0]]), {}, "integer token ids"),
    (torch.tensor([[1, 2, 3]]), {"attention_mask": [[1, 1, 0]]}, "left padding|last prompt"),
    (torch.tensor([[1, 2, 3]]), {"attention_mask": [[0, 1]]}, "shape"),
])
def test_malformed_prompts(scripted, prompt, kwargs, pattern):
    with pytest.raises(AdllmError, match=pattern):
        generate(scripted(4, 4), None, prompt, gen_length=4, **kwargs)


@pytest.mark.parametrize("model, kwargs, pattern", [
    (None, {}, r"model must be a loaded model \(with a ModelConfig .config\), got NoneType"),
    ("tiny", {}, r"load one with ad.load\('tiny'\)"),
    ("scripted", {"sparse": "uniform"}, "sparse='uniform' is neither a SparseConfig"),
    ("duck", {}, "with a ModelConfig .config"),
    ("scripted", {"seed": -1}, "seed=-1 is outside the unsigned 64-bit range"),
    ("scripted", {"seed": 1.5}, "seed=1.5 must be"),
    ("scripted", {"seed": "a"}, "seed='a' must be"),
    ("scripted", {"seed": 2**70}, "outside the unsigned 64-bit range"),
])
def test_bad_model_sparse_and_seed_are_one_line_errors(scripted, model, kwargs, pattern):
    """Found by an audit: these were AttributeError, ValueError or OverflowError deep inside,
    or (seed -1, 1.5) silently accepted where the CLI refuses them."""
    if model == "duck":  # a config that only looks like one
        import types

        model = types.SimpleNamespace(config=types.SimpleNamespace(family="llada"))
    model = scripted(4, 4) if model == "scripted" else model
    with pytest.raises(AdllmError, match=pattern) as err:
        generate(model, None, [1, 2], gen_length=4, **kwargs)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Seeds, sessions, progress and stats with the real fixture models


def test_seed_makes_random_remasking_reproducible(fixture_model):
    model = fixture_model("llada_tiny")
    kw = dict(gen_length=16, steps=8, block_length=8, remasking="random", temperature=0.5)
    a = generate(model, None, [1, 2, 3], seed=5, **kw).ids
    b = generate(model, None, [1, 2, 3], seed=5, **kw).ids
    c = generate(model, None, [1, 2, 3], seed=6, **kw).ids
    assert torch.equal(a, b) and not torch.equal(a, c)


class StubSparse:
    def __init__(self, session_cls):
        self.session_cls, self.requests = session_cls, []

    def new_session(self, model_config, total_steps):
        self.requests.append((model_config, total_steps))
        self.session = self.session_cls()
        return self.session


def test_sparse_config_session_gets_the_generation_length_and_block_starts(scripted,
                                                                           monkeypatch):
    """generate() builds a SparseConfig's session itself, telling it the generated tokens
    (prompt/generation budgets) and the first steps of LLaDA's later blocks (plan refresh)."""
    import adaptive_dllm.generation.api as api
    from adaptive_dllm.sparsity import SparseConfig

    seen = []
    real = api.build_session

    def spy(config, model_config, steps, **kw):
        seen.append((steps, kw))
        return real(config, model_config, steps, **kw)

    monkeypatch.setattr(api, "build_session", spy)
    cfg = SparseConfig(select=0.5, block_size=8, backend="reference", refresh="block")
    out = generate(scripted(2, 8), None, [1, 2], sparse=cfg, gen_length=8, steps=4,
                   block_length=4)
    assert seen == [(4, {"gen_length": 8, "block_starts": (2,)})]
    assert out.stats.sparse.total_steps == 4 and out.stats["sparse"]["region"] == "separate"


@pytest.mark.parametrize("name, kw", [
    ("llada_tiny", dict(steps=8, block_length=8, cfg_scale=1.0)),
    ("dream_tiny", dict(steps=8, alg="entropy")),
])
def test_sparse_session_sees_every_step_and_reports_stats(fixture_model, stub_session, name, kw):
    model = fixture_model(name)
    sparse = StubSparse(stub_session)
    done = []
    out = generate(model, None, [[1, 2, 3, 4], [5, 6]], sparse=sparse, gen_length=16,
                   on_step=lambda d, t: done.append((d, t)), **kw)
    dense = generate(model, None, [[1, 2, 3, 4], [5, 6]], gen_length=16, **kw)
    assert sparse.requests == [(model.config, 8)]
    assert sparse.session.begun == [(i, 8) for i in range(8)]
    assert done == [(i + 1, 8) for i in range(8)]
    assert out.stats["sparse"] == {"kind": "stub", "steps_seen": 8}
    assert torch.equal(out.ids, dense.ids)  # the stub attends densely
    s = dense.stats
    assert s["sparse"] is None and s["steps"] == 8 and s["batch"] == 2 and len(s["step_s"]) == 8
    assert s["total_s"] > 0 and s["step_median_s"] > 0 and s["prompt_length"] == 4


# ---------------------------------------------------------------------------------------------
# No host synchronisation in the loops


def test_sync_checker_catches_host_reads(sync_pattern):
    for bad in ("k = int(n)", "x.item()", "v = t.tolist()", "m.nonzero()", "if m.any():"):
        assert sync_pattern.search(bad), bad
    for fine in ("x.float()", "logits.long()", "torch.where(m, a, b)", "hint(3)"):
        assert not sync_pattern.search(fine), fine


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name, kw", [
    ("llada_tiny", dict(steps=8, block_length=8)),
    ("llada_tiny", dict(steps=8, block_length=4, cfg_scale=1.0, temperature=0.7)),
    ("llada_tiny", dict(steps=8, block_length=8, remasking="random")),
    ("dream_tiny", dict(steps=8, alg="maskgit_plus")),
    ("dream_tiny", dict(steps=16, alg="entropy", top_k=50, top_p=0.9)),
    ("dream_tiny", dict(steps=5, alg="topk_margin")),
])
def test_step_loop_never_synchronises_on_gpu(fixtures_dir, stub_session, name, kw):
    """From the first step's ``begin_step`` on, any synchronising CUDA call raises."""
    from adaptive_dllm.generation.api import make_options
    from adaptive_dllm.models import load_model

    class Armed(stub_session):
        def begin_step(self, step, total):
            super().begin_step(step, total)
            if step == 0:
                torch.cuda.set_sync_debug_mode("error")

    model = load_model(fixtures_dir / name, device="cuda", dtype="float32")
    opts = make_options(model.config.family, gen_length=16, **kw)
    sample = sample_llada if model.config.family == "llada" else sample_dream
    ids = torch.tensor([[0, 0, 11, 12, 13], [1, 2, 3, 4, 5]], device="cuda")
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], device="cuda", dtype=torch.bool)
    sample(model, ids, options=opts, attention_mask=mask)  # warm-up (lazy CUDA init syncs)
    torch.cuda.synchronize()
    try:
        with torch.inference_mode():
            out = sample(model, ids, options=opts, attention_mask=mask, session=Armed())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (out[:, 5:] != model.config.mask_id).all()
