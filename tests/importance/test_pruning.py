"""Head pruning: selection rules, gated model, NLL and command evaluators, the report."""

from __future__ import annotations

import math
import shlex
import sys

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.likelihood import masked_nll
from adaptive_dllm.importance import HeadImportance
from adaptive_dllm.importance.pruning import (
    GatedModel,
    command_evaluator,
    gated_evaluator,
    prune_gates,
    pruning_test,
)
from adaptive_dllm.models import ModelConfig, Transformer

SCORES = torch.tensor([[0.9, 0.1, 0.5, 0.3],
                       [0.8, 0.7, 0.2, 0.6],
                       [0.0, 0.4, 1.0, 0.05]])


def _imp(scores=SCORES, kind="query"):
    return HeadImportance(scores.clone(), kind, {"estimator": "test"})


def pruned(gates):
    return sorted(map(tuple, (gates == 0).nonzero().tolist()))


def test_most_least_random_global():
    assert pruned(prune_gates(_imp(), "most", k=3)) == [(0, 0), (1, 0), (2, 2)]
    assert pruned(prune_gates(_imp(), "least", k=3)) == [(0, 1), (2, 0), (2, 3)]
    r = prune_gates(_imp(), "random", k=5, seed=1)
    assert (r == 0).sum() == 5 and torch.equal(r, prune_gates(_imp(), "random", k=5, seed=1))
    assert not torch.equal(r, prune_gates(_imp(), "random", k=5, seed=2))
    assert (prune_gates(_imp(), "most", fraction=0.25) == 0).sum() == 3  # round(0.25 * 12)
    assert torch.equal(prune_gates(_imp(), "most", k=0), torch.ones(3, 4))


def test_global_never_empties_a_layer_but_keeps_the_count():
    scores = torch.tensor([[9.0, 8.0], [1.0, 0.0]])
    gates = prune_gates(scores, "most", k=2)
    assert pruned(gates) == [(0, 0), (1, 0)]  # (0, 1) skipped: layer 0 would be empty
    assert pruned(prune_gates(scores, "most", k=2, keep_one_per_layer=False)) == [(0, 0), (0, 1)]
    with pytest.raises(AdllmError, match="keeping one head per layer"):
        prune_gates(scores, "most", k=3)


def test_per_layer_scope():
    gates = prune_gates(_imp(), "most", k=1, scope="per_layer")
    assert pruned(gates) == [(0, 0), (1, 0), (2, 2)]
    gates = prune_gates(_imp(), "least", fraction=0.5, scope="per_layer")
    assert (gates == 0).sum(1).tolist() == [2, 2, 2]
    r = prune_gates(_imp(), "random", k=2, scope="per_layer", seed=3)
    assert (r == 0).sum(1).tolist() == [2, 2, 2]
    with pytest.raises(AdllmError, match="one must stay"):
        prune_gates(_imp(), "most", k=4, scope="per_layer")


def test_nan_heads_and_layer_range_are_not_candidates():
    scores = SCORES.clone()
    scores[0, 0] = float("nan")
    gates = prune_gates(scores, "most", k=2)
    assert pruned(gates) == [(1, 0), (2, 2)]
    assert pruned(prune_gates(SCORES, "most", k=2, layers=(1, -1))) == [(1, 0), (2, 2)]
    assert pruned(prune_gates(SCORES, "most", k=1, layers=(1, 1))) == [(1, 0)]
    with pytest.raises(AdllmError, match="layer range"):
        prune_gates(SCORES, "most", k=1, layers=(2, 5))


def test_bad_requests():
    with pytest.raises(AdllmError, match="per-query-head"):
        prune_gates(_imp(kind="kv"), "most", k=1)
    with pytest.raises(AdllmError, match="exactly one"):
        prune_gates(SCORES, "most")
    with pytest.raises(AdllmError, match="which"):
        prune_gates(SCORES, "middle", k=1)
    with pytest.raises(AdllmError, match="only 12 candidate"):
        prune_gates(SCORES, "most", k=13, keep_one_per_layer=False)


def tiny() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(family="llada", vocab_size=40, hidden_size=32, n_layers=3, n_heads=4,
                      n_kv_heads=2, intermediate_size=48, max_seq_len=64, mask_id=39)
    model = Transformer(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval().requires_grad_(False)


def test_gated_model_equals_head_gates_and_gated_evaluator():
    model = tiny()
    gates = prune_gates(_imp(), "most", k=3)
    ids = torch.randint(0, 39, (2, 16), generator=torch.Generator().manual_seed(0))
    gated = GatedModel(model, gates)
    assert torch.equal(gated(ids), model(ids, head_gates=gates))
    assert gated.config is model.config
    seen = []

    def metric(m):  # the caller's scorer (adllm prune passes the held-out NLL)
        seen.append(m)
        return {"nll@0.5": masked_nll(m, ids, [0.5], seed=1)[0].bits_per_token}

    evaluate = gated_evaluator(model, metric)
    base = evaluate(None)
    assert seen[0] is model  # the baseline scores the model itself
    assert base["nll@0.5"] == masked_nll(model, ids, [0.5], seed=1)[0].bits_per_token
    assert evaluate(gates)["nll@0.5"] != base["nll@0.5"]
    assert isinstance(seen[1], GatedModel) and torch.equal(seen[1].gates, gates)
    assert evaluate(torch.ones(3, 4)) == base


def test_pruning_test_report():
    seen = []

    def evaluate(gates):  # metric = summed score of the pruned heads
        return {"lost": 0.0 if gates is None else float(SCORES[gates == 0].sum())}

    report = pruning_test(_imp(), evaluate, k=3, seeds=range(4), on_run=seen.append)
    assert len(report.runs) == 6 and len(seen) == 6
    row = report.summary()["lost"]
    assert row["baseline"] == 0.0
    assert row["most"] == pytest.approx(0.9 + 0.8 + 1.0) and row["least"] == pytest.approx(0.15)
    assert row["least"] <= row["random_mean"] <= row["most"] and row["random_std"] > 0
    d = report.to_dict()
    assert d["settings"]["k"] == 3 and d["settings"]["importance"]["estimator"] == "test"
    assert [r["seed"] for r in d["runs"] if r["which"] == "random"] == [0, 1, 2, 3]


def test_command_evaluator(tmp_path):
    script = tmp_path / "count.py"
    script.write_text(
        "import json, os, sys\n"
        "g = json.load(open(sys.argv[1]))\n"
        "assert sys.argv[1] == os.environ['ADLLM_HEAD_GATES']\n"
        "print('log line')\n"
        "print(json.dumps({'pruned': len(g['pruned'])}))\n"
    )
    evaluate = command_evaluator(f"{sys.executable} {script} {{gates}}")
    assert evaluate(None) == {"pruned": 0.0}
    assert evaluate(prune_gates(SCORES, "least", k=2)) == {"pruned": 2.0}
    number = command_evaluator(f"{sys.executable} -c \"print(0.5)\"")
    assert number(None) == {"task": 0.5}
    with pytest.raises(AdllmError, match="failed with status 3"):
        command_evaluator(f"{sys.executable} -c \"import sys; sys.exit(3)\"")(None)
    with pytest.raises(AdllmError, match="not a number"):
        command_evaluator(f"{sys.executable} -c \"print('done')\"")(None)
    assert math.isfinite(number(torch.ones(1, 1))["task"])
    # found by an audit: JSON's NaN and an overflowing 1e999 were accepted as metrics
    echo = tmp_path / "echo.py"
    echo.write_text("import sys\nprint(sys.argv[1])\n")
    for printed in ("NaN", "1e999", '{"a": NaN}', '{"a": -Infinity}'):
        with pytest.raises(AdllmError, match="non-finite"):
            command_evaluator(f"{sys.executable} {echo} {shlex.quote(printed)}")(None)
