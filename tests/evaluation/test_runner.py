"""The task runner: conditions on the same items, batching, stop cutting, reports, errors."""

from __future__ import annotations

import json
import math

import pytest
from toy_tasks import ToyChoice, ToyGenerate

import adaptive_dllm as ad
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.report import wilson_interval
from adaptive_dllm.evaluation.runner import RunSettings, cut_at_stop, derive_seed, evaluate_task


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.28  # 0.2775 for 0/10
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_cut_at_stop_takes_earliest():
    assert cut_at_stop("ab\n\ncd###", ("###", "\n\n")) == "ab"
    assert cut_at_stop("abc", ("x",)) == "abc"
    assert cut_at_stop("abc", ("", "c")) == "ab"


def test_derive_seed_stable_and_distinct():
    assert derive_seed(0, "a") == derive_seed(0, "a")
    assert len({derive_seed(0, "a"), derive_seed(1, "a"), derive_seed(0, "b")}) == 3


def test_every_condition_scores_the_same_items_and_outputs_match_generate(bundled):
    model, tok = bundled
    task = ToyGenerate(n=3)
    s = RunSettings(modes=("dense", "uniform"), selects=(0.5, 1.0), sparse={"block_size": 32})
    report = evaluate_task(model, tok, task, s)
    assert [(r.mode, r.select) for r in report.results] == [("dense", 1.0), ("uniform", 0.5),
                                                             ("uniform", 1.0)]
    assert all(r.n == 3 for r in report.results)
    ids = {(rec["mode"], rec["select"]): [] for rec in report.records}
    for rec in report.records:
        ids[(rec["mode"], rec["select"])].append(rec["id"])
    assert all(v == ["toy/0", "toy/1", "toy/2"] for v in ids.values())
    # the runner's completion of an item is ad.generate's text cut at the stop sequence
    item = task.items()[1]
    out = ad.generate(model, tok, item.prompt, seed=derive_seed(0, item.id, 0),
                      **task.generation_defaults())
    dense = next(r for r in report.records if r["id"] == item.id and r["mode"] == "dense")
    assert dense["outputs"] == [cut_at_stop(out.text, task.stop)]
    # select 1 runs the dense path exactly
    u1 = [r["outputs"] for r in report.records if r["mode"] == "uniform" and r["select"] == 1.0]
    d = [r["outputs"] for r in report.records if r["mode"] == "dense"]
    assert u1 == d
    res = {(r.mode, r.select): r for r in report.results}
    assert res[("dense", 1.0)].realized_keep_ratio == 1.0
    keep = res[("uniform", 0.5)].realized_keep_ratio
    assert keep is not None and keep < 1.0  # the sparse plan really ran
    for r in report.results:
        assert r.forwards_per_item == 16 and r.tokens_per_s > 0
        assert 0 <= r.mean_gen_tokens <= 16
        assert r.accuracy == pytest.approx(r.metrics["correct"])
        assert r.ci95 == wilson_interval(r.accuracy * 3, 3)
    json.dumps(report.to_dict(), allow_nan=False)


def test_batched_dense_equals_one_by_one(bundled):
    model, tok = bundled
    task = ToyGenerate(n=5)
    one = evaluate_task(model, tok, task, RunSettings(batch_size=1))
    four = evaluate_task(model, tok, task, RunSettings(batch_size=4))
    assert [r["outputs"] for r in one.records] == [r["outputs"] for r in four.records]
    assert one.to_dict()["results"][0]["accuracy"] == four.to_dict()["results"][0]["accuracy"]


def test_stochastic_sampling_uses_per_item_seeds(bundled):
    model, tok = bundled
    task = ToyGenerate(n=3)
    opts = {"temperature": 1.0}
    a = evaluate_task(model, tok, task, RunSettings(batch_size=1, sampler=opts, samples=2))
    b = evaluate_task(model, tok, task, RunSettings(batch_size=3, sampler=opts, samples=2))
    assert [r["outputs"] for r in a.records] == [r["outputs"] for r in b.records]
    assert any(len(set(r["outputs"])) == 2 for r in a.records)  # samples differ


def test_loglikelihood_task_calls_the_estimator_with_per_choice_seeds(bundled):
    model, tok = bundled
    calls = []

    def estimator(model, prefix, cont, *, mc_num, batch_size, seed, sparse):
        calls.append((tuple(prefix), tuple(cont), mc_num, seed, sparse is None))
        return -float(len(cont)) if tok.decode(cont) == " the" else -100.0

    s = RunSettings(modes=("dense", "uniform"), selects=(0.5,), mc_num=4, sparse={"block_size": 32})
    report = evaluate_task(model, tok, ToyChoice(n=2), s, estimator=estimator)
    assert [r.accuracy for r in report.results] == [1.0, 1.0]
    assert len(calls) == 2 * 2 * 2
    assert calls[0][0] == tuple(tok.encode(ToyChoice().items()[0].prompt))
    assert calls[0][1] == tuple(tok.encode(" the", add_special_tokens=False))
    assert {c[3] for c in calls if c[4]} == {c[3] for c in calls if not c[4]}  # paired seeds
    assert report.results[0].forwards_per_item == 2 * 4


def test_default_estimator_is_the_monte_carlo_estimator(bundled):
    """The runner's default estimator is evaluation.loglik's, and a sparse config at select 1
    scores exactly as dense."""
    from adaptive_dllm.evaluation.loglik import estimate_loglikelihood
    from adaptive_dllm.evaluation.runner import default_estimator
    from adaptive_dllm.sparsity.config import SparseConfig

    model, tok = bundled
    prefix = tok.encode("ROMEO:\nBut soft", add_special_tokens=False)
    cont = tok.encode(" light", add_special_tokens=False)
    est = default_estimator()
    got = est(model, prefix, cont, mc_num=4, batch_size=2, seed=3, sparse=None)
    assert got == estimate_loglikelihood(model, prefix, cont, mc_num=4, batch_size=2, seed=3)
    full = SparseConfig(select=1.0, block_size=16, backend="reference")
    assert est(model, prefix, cont, mc_num=4, batch_size=2, seed=3, sparse=full) == got


@pytest.mark.parametrize("kwargs, match", [
    ({"modes": ("dense", "sparse")}, "unknown mode"),
    ({"selects": (0.0,), "modes": ("uniform",)}, "select"),
    ({"batch_size": 0}, "batch_size"),
    ({"sparse": {"select": 0.2}}, "select"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(AdllmError, match=match):
        RunSettings(**kwargs)


def test_no_tokenizer_and_adaptive_without_importance(bundled):
    model, tok = bundled
    with pytest.raises(AdllmError, match="no tokenizer"):
        evaluate_task(model, None, ToyGenerate(n=1))
    with pytest.raises(AdllmError, match="importance"):
        evaluate_task(model, tok, ToyGenerate(n=1), RunSettings(modes=("adaptive",)))


def test_report_json_is_strict_with_empty_condition():
    from adaptive_dllm.evaluation.report import aggregate

    (res,) = aggregate([], [("dense", 1.0)])
    assert res.n == 0 and res.accuracy is None and res.ci95 == (0.0, 1.0)
    assert not math.isnan(res.ci95[1])


def test_stats_helper_reads_dicts_and_typed_objects():
    from dataclasses import dataclass

    from adaptive_dllm.evaluation.report import metric_value
    from adaptive_dllm.evaluation.units import _keep

    @dataclass
    class Typed:
        backend: str = "reference"
        realized_keep_ratio: float = 0.25

        def to_dict(self):
            return {"backend": self.backend, "realized_keep_ratio": self.realized_keep_ratio}

    class Attrs:
        realized_keep_ratio = 0.5

    assert metric_value({"a": 1}, "a") == 1 and metric_value(None, "a") is None
    assert metric_value(Typed(), "realized_keep_ratio") == 0.25
    assert metric_value(Attrs(), "realized_keep_ratio") == 0.5
    assert _keep(Typed()) == 0.25 and _keep({"backend": "dense"}) == 1.0 and _keep(None) == 1.0


def test_keep_counts_the_cached_steps():
    """With a K/V cache most steps are cached: their plans' keep ratio counts, weighted by steps
    (a prefix-cached sparse run with one refresh, all dense, reported 1.0 before)."""
    from adaptive_dllm.evaluation.units import _keep

    one_block = {"backend": "gather", "dense_steps": 1, "sparse_steps": 0,
                 "realized_keep_ratio": None, "cached_sparse_steps": 31, "cached_keep_ratio": 0.3}
    assert _keep(one_block) == 0.3
    four_blocks = {**one_block, "sparse_steps": 3, "realized_keep_ratio": 0.31,
                   "cached_sparse_steps": 28}
    assert _keep(four_blocks) == pytest.approx((3 * 0.31 + 28 * 0.3) / 31)
    cached_dense = {**four_blocks, "cached_sparse_steps": 0}
    assert _keep(cached_dense) == 0.31


def test_per_item_loop_of_a_generation_reads_nothing_from_the_device(sync_pattern):
    """The generated ids come to the host once per generate() call, not once per item."""
    import ast
    import inspect
    import textwrap

    from adaptive_dllm.evaluation import units

    source = textwrap.dedent(inspect.getsource(units._generate_batch))
    loops = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.For)]
    per_item = next(n for n in loops if ast.unparse(n.iter) == "enumerate(texts)")
    found = sync_pattern.search(ast.get_source_segment(source, per_item))
    assert found is None, f"{found.group()!r} in the per-item loop"


def test_chat_prefix_of_a_loglikelihood_is_the_generation_prompt(bundled):
    """With a chat template, the scored prefix is what generation feeds the model: the template
    once, its special tokens not doubled by the encoder, the assistant turn opened."""
    from adaptive_dllm.generation.prompts import encode_prompt

    model, byte_tok = bundled

    class ChatTokenizer:
        """The byte tokenizer with a chat template and an encoder that adds a BOS (id 0)."""

        def __getattr__(self, name):
            return getattr(byte_tok, name)

        def apply_chat_template(self, messages, *, add_generation_prompt=True):
            text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
            return "\x00" + text + ("<assistant>" if add_generation_prompt else "")

        def encode(self, text, *, add_special_tokens=True):
            return ([0] if add_special_tokens else []) + byte_tok.encode(text)

    tok = ChatTokenizer()
    prefixes = []

    def estimator(model, prefix, cont, *, mc_num, batch_size, seed, sparse):
        prefixes.append(list(prefix))
        return 0.0

    evaluate_task(model, tok, ToyChoice(n=1), RunSettings(chat=True, mc_num=1), estimator=estimator)
    ids, _ = encode_prompt(ToyChoice().items()[0].prompt, tok, model.config, chat=True,
                           attention_mask=None)
    assert prefixes and all(p == ids[0].tolist() for p in prefixes)
    assert prefixes[0][:2] != [0, 0]
