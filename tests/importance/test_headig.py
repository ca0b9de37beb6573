"""HeadIG: gates, completeness, STP == DP at zero thresholds, determinism, resume, Dream shift."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance import headig as hig
from adaptive_dllm.importance.calibration import CalibrationSet, Example
from adaptive_dllm.importance.headig import (
    HeadIGSettings,
    MaskedObjective,
    describe_cost,
    headig,
    integrated_gradients,
    mask_variants,
    stp_thresholds,
)
from adaptive_dllm.models import ModelConfig, Transformer, get_family

FAST = dict(mask_ratios=(0.3, 0.7), mask_samples=1, steps=4, path_samples=2)


def tiny(family: str = "llada", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(family=family, vocab_size=40, hidden_size=32, n_layers=2, n_heads=4,
                      n_kv_heads=2, intermediate_size=48, max_seq_len=64, mask_id=39)
    model = Transformer(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval().requires_grad_(False)


def examples(n: int = 2, length: int = 14, start: int = 4) -> list[Example]:
    gen = torch.Generator().manual_seed(1)
    return [Example(torch.randint(0, 39, (length,), generator=gen), start, f"ex{i}") for i in range(n)]


def test_gates_of_one_reproduce_logits_and_zeroing_one_gate_changes_them():
    model = tiny()
    ids = examples(1)[0].ids[None]
    ones = torch.ones(2, 4)
    assert torch.equal(model(ids, head_gates=ones), model(ids))
    gates = ones.clone()
    gates[1, 2] = 0
    assert not torch.allclose(model(ids, head_gates=gates), model(ids))


@pytest.mark.parametrize("name", ["llada_tiny", "dream_tiny"])
def test_dp_completeness_within_two_percent(fixture_model, name):
    model = fixture_model(name)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(vocab, 120), (20,), generator=gen)
    ids[ids == model.config.mask_id] = 1
    ex = Example(ids, 5, "ex")
    settings = HeadIGSettings(path="dp", steps=16, mask_samples=1, mask_ratios=(0.2, 0.5, 0.9))
    inputs, masked = mask_variants(ex, settings, 0, mask_id=model.config.mask_id,
                                   logit_shift=get_family(model.config.family).logit_shift)
    obj = MaskedObjective(model, ex.ids, inputs, masked, loss="mean_masked", batch_size=3)
    alpha0 = torch.zeros(model.config.n_layers, model.config.n_heads, dtype=torch.float64)
    ig = integrated_gradients(obj.value_and_grad, alpha0, steps=16)
    delta = obj.value(torch.ones_like(alpha0)) - obj.value(alpha0)
    assert abs(delta) > 1e-3  # the test is informative: the heads matter
    assert abs(ig.sum().item() - delta) <= 0.02 * abs(delta)


def test_completeness_is_reported_and_tight_for_dp():
    imp = headig(tiny(), examples(2), HeadIGSettings(path="dp", steps=24, mask_samples=1))
    c = imp.metadata["completeness"]
    assert c["rel_gap_max"] < 0.02
    assert math.isclose(c["ig_sum_mean"], c["j_full_mean"] - c["j_baseline_mean"], rel_tol=0.02)


def test_objective_is_minus_the_masked_cross_entropy_with_family_alignment():
    for family in ("llada", "dream"):
        model = tiny(family)
        ex = examples(1)[0]
        settings = HeadIGSettings(mask_ratios=(0.5,), mask_samples=3)
        shift = get_family(family).logit_shift
        inputs, masked = mask_variants(ex, settings, 0, mask_id=39, logit_shift=shift)
        gates = torch.rand(2, 4, generator=torch.Generator().manual_seed(2))
        for loss in ("mean_masked", "sum"):
            obj = MaskedObjective(model, ex.ids, inputs, masked, loss=loss, batch_size=2)
            expected = 0.0
            for x, m in zip(inputs, masked, strict=True):
                logits = model(x[None], head_gates=gates)[0]
                if shift:  # Dream: row i-1 predicts token i
                    logits = torch.cat([logits[:1], logits[:-1]])
                ce = F.cross_entropy(logits[m], ex.ids[m], reduction="sum")
                expected += (ce / m.sum() if loss == "mean_masked" else ce).item()
            assert obj.value(gates) == pytest.approx(-expected / len(inputs), rel=1e-5)


def test_stp_with_zero_thresholds_equals_dp():
    model = tiny()
    ex = examples(1)[0]
    settings = HeadIGSettings(**FAST)
    inputs, masked = mask_variants(ex, settings, 0, mask_id=39, logit_shift=False)
    obj = MaskedObjective(model, ex.ids, inputs, masked, loss="mean_masked", batch_size=4)
    for baseline in (0.0, 0.3):
        alpha0 = torch.full((2, 4), baseline, dtype=torch.float64)
        for rule in ("midpoint", "right"):
            dp = integrated_gradients(obj.value_and_grad, alpha0, steps=5, rule=rule)
            stp = integrated_gradients(obj.value_and_grad, alpha0, steps=5, rule=rule,
                                       thresholds=torch.zeros(2, 4, dtype=torch.float64))
            assert torch.equal(dp, stp)


def test_stp_path_is_monotone_and_moves_each_head_after_its_threshold():
    u = stp_thresholds((2, 4), seed=0, index=0, path=0)
    alpha0 = torch.full((2, 4), 0.2, dtype=torch.float64)
    previous = alpha0
    for t in torch.linspace(0, 1, 21).tolist():
        a = hig.gate_path(t, alpha0, u)
        assert (a >= previous).all()
        assert torch.equal(a[u >= t], alpha0[u >= t])  # not started yet
        previous = a
    assert torch.allclose(hig.gate_path(1.0, alpha0, u), torch.ones(2, 4, dtype=torch.float64))


def test_deterministic_for_a_seed_and_independent_of_batching():
    model, exs = tiny(), examples(2)
    a = headig(model, exs, HeadIGSettings(**FAST, seed=3, mask_batch_size=1))
    b = headig(model, exs, HeadIGSettings(**FAST, seed=3, mask_batch_size=8))
    c = headig(model, exs, HeadIGSettings(**FAST, seed=4))
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-5)
    assert torch.equal(a.scores, headig(model, exs, HeadIGSettings(**FAST, seed=3, mask_batch_size=1)).scores)
    assert not torch.allclose(a.scores, c.scores)


def test_artifact_metadata_and_sign():
    data = CalibrationSet(tuple(examples(2)), {"kind": "test", "n": 2})
    imp = headig(tiny(), data, HeadIGSettings(**FAST))
    m = imp.metadata
    assert imp.head_kind == "query" and imp.scores.shape == (2, 4)
    assert m["estimator"] == "headig" and m["sign"] == "higher_is_more_important"
    assert m["data"] == {"kind": "test", "n": 2} and m["seed"] == 0
    assert m["settings"]["path"] == "stp" and m["passes_per_example"] == 2 * 1 * 4 * 2
    assert m["n_kv_heads"] == 2 and m["family"] == "llada"
    # Signed scores: completeness makes their total the (positive) loss reduction of all heads.
    assert math.copysign(1, imp.scores.sum().item()) == math.copysign(
        1, m["completeness"]["j_full_mean"] - m["completeness"]["j_baseline_mean"])


def test_postprocessing_per_example():
    model, exs = tiny(), examples(3)
    signed = headig(model, exs, HeadIGSettings(**FAST))
    absolute = headig(model, exs, HeadIGSettings(**FAST, postprocess="abs"))
    relu = headig(model, exs, HeadIGSettings(**FAST, postprocess="relu"))
    assert (absolute.scores >= signed.scores.abs() - 1e-7).all()  # mean |x| >= |mean x|
    assert (relu.scores >= 0).all() and (relu.scores >= signed.scores - 1e-7).all()


def test_layer_range_leaves_other_layers_unattributed():
    imp = headig(tiny(), examples(1), HeadIGSettings(**FAST, layers=(1, -1)))
    assert torch.isnan(imp.scores[0]).all() and torch.isfinite(imp.scores[1]).all()
    assert imp.metadata["layers_attributed"] == [1, 1]
    with pytest.raises(AdllmError, match="layer range"):
        headig(tiny(), examples(1), HeadIGSettings(**FAST, layers=(1, 5)))


def test_checkpointing_gives_the_same_scores():
    model, exs = tiny(), examples(1)
    plain = headig(model, exs, HeadIGSettings(**FAST), checkpointing=False)
    ckpt = headig(model, exs, HeadIGSettings(**FAST), checkpointing=True)
    torch.testing.assert_close(plain.scores, ckpt.scores, atol=1e-6, rtol=1e-5)
    assert model.gradient_checkpointing is False  # restored
    assert not any(p.requires_grad for p in model.parameters())


def test_resume_skips_done_examples_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    model, exs = tiny(), examples(3)
    settings = HeadIGSettings(**FAST)
    full = headig(model, exs, settings)
    state_path = tmp_path / "partial.pt"
    headig(model, exs, settings, resume=state_path)
    state = torch.load(state_path, weights_only=True)
    assert len(state["ig"]) == 3
    for key in ("ig", "j_full", "j_base"):  # simulate a run killed after the first example
        state[key] = state[key][:1]
    torch.save(state, state_path)
    calls = []
    original = hig.integrated_gradients
    monkeypatch.setattr(hig, "integrated_gradients", lambda *a, **k: calls.append(1) or original(*a, **k))
    resumed = headig(model, exs, settings, resume=state_path)
    assert len(calls) == 2 * settings.paths  # only examples 1 and 2 were computed
    torch.testing.assert_close(resumed.scores, full.scores)
    # A resumed run may change the post-processing (applied at the end) but not the settings.
    headig(model, exs, HeadIGSettings(**FAST, postprocess="abs"), resume=state_path)
    with pytest.raises(AdllmError, match="resume file"):
        headig(model, exs, HeadIGSettings(**FAST, seed=9), resume=state_path)


def test_masks_stay_in_the_scored_span_and_are_seeded():
    ex = Example(torch.arange(1, 21), 0, "ex")
    s = HeadIGSettings(mask_ratios=(0.01, 0.5, 1.0), mask_samples=2)
    for shift in (False, True):
        inputs, masked = mask_variants(ex, s, 7, mask_id=99, logit_shift=shift)
        assert inputs.shape == (6, 20) and masked.sum(1).min() >= 1  # at least one position
        assert torch.equal(inputs == 99, masked)
        assert not masked[:, 0].any() if shift else masked[4:, 0].all()
    again, _ = mask_variants(ex, s, 7, mask_id=99, logit_shift=True)
    other, _ = mask_variants(ex, s, 8, mask_id=99, logit_shift=True)
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)
    prompt = Example(torch.arange(1, 21), 12, "ex")
    _, masked = mask_variants(prompt, s, 0, mask_id=99, logit_shift=False)
    assert not masked[:, :12].any()


def test_settings_validation_and_cost_line():
    assert HeadIGSettings().passes_per_example == 320
    assert HeadIGSettings(path="dp").passes_per_example == 80
    line = describe_cost(HeadIGSettings(), 50)
    assert "= 320 forward+backward passes per example" in line and "16000" in line
    for bad in (dict(steps=0), dict(mask_ratios=(0.0,)), dict(path="x"), dict(baseline=1.0),
                dict(postprocess="neg")):
        with pytest.raises(AdllmError):
            HeadIGSettings(**bad)


def test_value_runs_the_eager_element_wise_code_like_value_and_grad(monkeypatch):
    """The completeness check compares J(1) - J(0) from value() with gradients from
    value_and_grad() (autograd: eager code); value() must not switch to the fused kernels."""
    from adaptive_dllm.models.transformer import fused_kernels_enabled

    model = tiny()
    ex = examples(1)[0]
    inputs, masked = mask_variants(ex, HeadIGSettings(mask_ratios=(0.5,), mask_samples=2), 0,
                                   mask_id=39, logit_shift=False)
    obj = MaskedObjective(model, ex.ids, inputs, masked, loss="mean_masked", batch_size=2)
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: seen.append(fused_kernels_enabled())
                        or forward(*a, **k))
    obj.value(torch.ones(2, 4))
    assert seen == [False] and fused_kernels_enabled()


@pytest.mark.parametrize(("content", "words"), [
    (b"PK\x03\x04 truncated", "damaged"),
    (None, "missing entries"),  # a torch file of something else
    (b"", "damaged"),
])
def test_damaged_or_foreign_resume_file_is_a_one_line_error(tmp_path, content, words):
    path = tmp_path / "partial.pt"
    if content is None:
        torch.save({"weights": torch.ones(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(AdllmError, match=words) as info:
        headig(tiny(), examples(1), HeadIGSettings(**FAST), resume=path)
    assert "\n" not in str(info.value) and "delete it" in str(info.value)


def test_resume_saves_never_share_a_temporary_name(tmp_path):
    # The old fixed name PATH.tmp, blocked here by a directory, is not used: concurrent runs
    # with one resume file each write their own temporary file and rename it.
    path = tmp_path / "partial.pt"
    (tmp_path / "partial.pt.tmp").mkdir()
    headig(tiny(), examples(1), HeadIGSettings(**FAST), resume=path)
    assert len(torch.load(path, weights_only=True)["ig"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.pt", "partial.pt.tmp"]


def test_progress_lines_every_tenth_when_not_on_a_terminal(capsys):
    """HeadIG reports through the shared progress helper: whole lines on a non-terminal, a
    measured time estimate after the first example, and a resumed run counts from where it
    stopped."""
    settings = HeadIGSettings(**FAST)
    per_example = settings.paths * settings.steps
    headig(tiny(), examples(2), settings, progress=True)
    err = capsys.readouterr().err
    total = 2 * per_example
    shown = {int(m) for m in re.findall(rf"HeadIG: (\d+)/{total} step", err)}
    assert shown == set(range(2, total + 1, 2))  # 16 steps: a line per tenth rounds up to 2
    assert "HeadIG: example 1 took" in err and "gap=" in err
    assert "\r" not in err  # lines, not a redrawn bar


def test_resumed_progress_starts_at_the_examples_done(tmp_path, capsys):
    settings = HeadIGSettings(**FAST)
    per_example = settings.paths * settings.steps
    path = tmp_path / "r.pt"
    headig(tiny(), examples(2), settings, resume=path)
    state = torch.load(path, weights_only=True)
    torch.save({**state, **{k: state[k][:1] for k in ("ig", "j_full", "j_base")}}, path)
    capsys.readouterr()  # as if stopped after the first example
    headig(tiny(), examples(2), settings, resume=path, progress=True)
    err = capsys.readouterr().err
    counts = [int(m) for m in re.findall(rf"HeadIG: (\d+)/{2 * per_example} step", err)]
    assert counts and min(counts) > per_example  # counted on from the first example's ticks
    assert "HeadIG: example 2 took" in err


def test_per_layer_runs_each_layer_alone_with_its_own_resume_file(tmp_path):
    model, exs = tiny(), examples(1)
    settings = HeadIGSettings(**FAST)
    both = headig(model, exs, settings, resume=tmp_path / "r.pt", per_layer=True)
    for layer in (0, 1):
        alone = headig(model, exs, HeadIGSettings(**FAST, layers=(layer, layer)))
        torch.testing.assert_close(both.scores[layer], alone.scores[layer])
        assert (tmp_path / f"r.layer{layer}.pt").is_file()
    assert both.metadata["settings"]["per_layer"] is True
