"""Fidelity evaluation: select = 1 equals dense exactly, realised keep ratios, report structure."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from adaptive_dllm.attention.api import attend
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.data import split_passages
from adaptive_dllm.evaluation.fidelity import (
    FidelitySettings,
    calibration_importance,
    evaluate_fidelity,
    format_markdown,
    format_table,
    kl_divergence,
    plot_fidelity,
    split_passages_for_fidelity,
)
from adaptive_dllm.evaluation.likelihood import masked_nll
from adaptive_dllm.generation.api import generate
from adaptive_dllm.importance.estimators import random_importance
from adaptive_dllm.models import ModelConfig, Transformer
from adaptive_dllm.sparsity.config import SparseConfig

V, MASK = 40, 39


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig(family="llada", vocab_size=V, hidden_size=32, n_layers=2, n_heads=4,
                         n_kv_heads=2, intermediate_size=48, max_seq_len=64, mask_id=MASK)
    return Transformer(config).eval()


@pytest.fixture(scope="module")
def passages():
    return torch.randint(0, MASK, (8, 64), generator=torch.Generator().manual_seed(0))


def small(**overrides) -> FidelitySettings:
    """2 layers x 2 KV heads = 4 units; 64-token passages = 8 blocks of 8; prompt 32 + gen 32."""
    opts = dict(selects=(0.25, 0.5, 1.0), block_size=8, passages=4, prompts=2, prompt_length=32,
                gen_length=32, steps=8, block_length=16, calibration=2, batch_size=2)
    return FidelitySettings(**{**opts, **overrides})


@pytest.fixture(scope="module")
def report(model, passages):
    return evaluate_fidelity(model, passages, small())


def rows_by(report, mode):
    return {r.select: r for r in report.rows if r.mode == mode}


@pytest.mark.parametrize("mode", ["uniform", "adaptive"])
def test_select_one_equals_dense_exactly(report, mode):
    dense = report.rows[0]
    full = rows_by(report, mode)[1.0]
    assert [e["bits"] for e in full.nll] == [e["bits"] for e in dense.nll]
    assert all(e["delta"] == 0.0 for e in full.nll)
    # Agreement 1 and KL exactly 0: identical generated ids and identical logits.
    assert (full.token_agreement, full.kl_final, full.kl_commit) == (1.0, 0.0, 0.0)
    assert full.keep_nll == full.keep_gen == 1.0
    assert full.sparse_stats["nll"]["backend"] == full.sparse_stats["gen"]["backend"] == "dense"


@pytest.mark.parametrize("mode", ["uniform", "adaptive"])
@pytest.mark.parametrize("select", [0.25, 0.5])
def test_realised_keep_ratio_matches_target_and_sparse_really_runs(report, mode, select):
    row = rows_by(report, mode)[select]
    # Budgets divide exactly here: 4 units x 8 blocks (likelihood); 4 x 4 per region (generation).
    assert row.keep_nll == pytest.approx(select, abs=1e-12)
    assert row.keep_gen == pytest.approx(select, abs=1e-12)
    gen = row.sparse_stats["gen"]
    assert gen["backend"] == "gather" and gen["region"] == "separate"
    # ceil(0.2 * 8) = 2 dense steps; one plan for the rest (refresh="never", the default).
    assert gen["refresh_steps"] == 0
    assert gen["dense_steps"] == 2 and gen["sparse_steps"] == 6
    assert row.sparse_stats["nll"]["region"] == "joint"
    assert any(e["delta"] != 0.0 for e in row.nll)  # sparsity changes the numbers
    assert row.kl_commit > 0.0


def test_region_joint_reaches_the_generation_session(model, passages):
    rep = evaluate_fidelity(model, passages, small(selects=(0.5,), modes=("uniform",), passages=0,
                                                   region="joint"))
    assert rep.rows[1].sparse_stats["gen"]["region"] == "joint"
    assert rep.rows[1].keep_gen == pytest.approx(0.5, abs=1e-12)


def test_report_json_structure(report):
    record = json.loads(json.dumps(report.to_dict()))
    assert set(record) == {"settings", "backend", "backend_note", "importance", "passages",
                           "elapsed_s", "rows"}
    assert record["backend"] == "gather" and "forced" in record["backend_note"]
    assert record["importance"] == {"source": "estimated", "method": "entropy",
                                    "calibration_passages": [1, 5]}
    assert [(r["mode"], r["select"]) for r in record["rows"]] == [("dense", 1.0)] + [
        (m, s) for m in ("uniform", "adaptive") for s in (0.25, 0.5, 1.0)]
    row = record["rows"][1]
    assert set(row) == {"mode", "select", "nll", "keep_nll", "token_agreement", "kl_final",
                        "kl_commit", "keep_gen", "sparse_stats"}
    assert [e["mask_ratio"] for e in row["nll"]] == [0.15, 0.5, 0.9]
    assert set(row["nll"][0]) == {"mask_ratio", "bits", "stderr", "delta"}
    assert record["settings"]["selects"] == [0.25, 0.5, 1.0]


def test_dense_row_matches_masked_nll_and_generate(model, passages, report):
    picked = report.passages
    dense = masked_nll(model, passages[picked["eval"]], (0.15, 0.5, 0.9), batch_size=2)
    assert [e["bits"] for e in report.rows[0].nll] == [r.bits_per_token for r in dense]


def test_masked_nll_passes_the_attention_hook(model, passages):
    layers = []

    def hook(layer, q, k, v, key_mask):
        layers.append(layer)
        return attend(q, k, v, key_mask=key_mask)

    with_hook = masked_nll(model, passages[:2], [0.5], attn=hook, batch_size=2)
    assert layers == [0, 1]
    assert with_hook == masked_nll(model, passages[:2], [0.5], batch_size=2)


def test_full_budget_session_equals_dense_in_library_calls(model, passages):
    imp = random_importance(model.config, seed=1)
    for importance in (None, imp):
        cfg = SparseConfig(select=1.0, block_size=8, backend="reference", importance=importance)
        session = replace(cfg, likelihood=True).new_session(model.config, 1)
        assert masked_nll(model, passages[:2], [0.5], attn=session) == masked_nll(
            model, passages[:2], [0.5])
        opts = dict(gen_length=16, steps=4, block_length=8)
        sparse = generate(model, None, passages[0, :16].tolist(), sparse=cfg, **opts)
        dense = generate(model, None, passages[0, :16].tolist(), **opts)
        assert torch.equal(sparse.ids, dense.ids)


def test_bundled_model_select_one_equals_dense():
    from adaptive_dllm.models.checkpoints import load

    model, tok = load(device=torch.device("cpu"))
    text = (Path(model.source) / "heldout.txt").read_text()
    passages = split_passages(tok.encode(text, add_special_tokens=False), 128)[:6]
    s = FidelitySettings(selects=(1.0,), mask_ratios=(0.5,), passages=2, prompts=1,
                         prompt_length=64, gen_length=32, steps=4, calibration=1)
    rep = evaluate_fidelity(model, passages, s, tokenizer=tok)
    dense = rep.rows[0]
    for row in rep.rows[1:]:
        assert row.nll[0]["bits"] == dense.nll[0]["bits"]
        assert (row.token_agreement, row.kl_final, row.kl_commit) == (1.0, 0.0, 0.0)


def test_split_is_disjoint_and_spread():
    picked = split_passages_for_fidelity(64, FidelitySettings(), need_calibration=True)
    assert picked["eval"] == [0, 8, 16, 24, 32, 40, 48, 56]
    assert picked["prompts"] == [0, 16, 32, 48]
    assert picked["calibration"] == [1, 17, 33, 49]
    assert not set(picked["calibration"]) & (set(picked["eval"]) | set(picked["prompts"]))
    assert split_passages_for_fidelity(64, FidelitySettings(), need_calibration=False)[
        "calibration"] == []


def test_split_errors():
    with pytest.raises(AdllmError, match="even indices"):
        split_passages_for_fidelity(10, FidelitySettings(passages=8), need_calibration=False)
    with pytest.raises(AdllmError, match="--importance FILE"):
        split_passages_for_fidelity(1, FidelitySettings(passages=1, prompts=1),
                                    need_calibration=True)


@pytest.mark.parametrize(("options", "message"), [
    ({"selects": (0.0,)}, "select values"),
    ({"selects": (0.5, 1.5)}, "select values"),
    ({"selects": (math.nan,)}, "select values"),
    ({"selects": ()}, "select values"),
    ({"modes": ("dense", "sparse")}, "unknown mode"),
    ({"mask_ratios": (0.0,)}, "mask ratios"),
    ({"importance_method": "headig"}, "importance method"),
    ({"passages": 0, "prompts": 0}, "nothing to evaluate"),
    ({"skip": 1.0}, "skip"),
    ({"block_size": 48}, "block_size"),
    ({"backend": "auto"}, "sparse backend"),
    ({"steps": 0}, "steps"),
])
def test_settings_validation(options, message):
    with pytest.raises(AdllmError, match=message):
        FidelitySettings(**options)


def test_bad_inputs(model, passages):
    with pytest.raises(AdllmError, match="only used by the adaptive mode"):
        evaluate_fidelity(model, passages, small(modes=("dense", "uniform")),
                          importance=random_importance(model.config))
    wrong = ModelConfig(family="llada", vocab_size=V, hidden_size=32, n_layers=3, n_heads=4,
                        n_kv_heads=2, intermediate_size=48, max_seq_len=64, mask_id=MASK)
    with pytest.raises(AdllmError):
        evaluate_fidelity(model, passages, small(), importance=random_importance(wrong))
    with pytest.raises(AdllmError, match="exceeds the model context"):
        evaluate_fidelity(model, passages, small(gen_length=64))


def test_importance_file_is_used(model, passages):
    imp = calibration_importance(model, passages[[1, 3]], block_size=8)
    assert imp.scores.shape == (2, 4) and imp.metadata["estimator"] == "entropy"
    rep = evaluate_fidelity(model, passages, small(selects=(0.5,), prompts=0), importance=imp)
    assert rep.importance["source"] == "file" and rep.passages["calibration"] == []
    # the record names the file's estimator, not the unused statistic of the settings
    record = rep.to_dict()
    assert record["importance"]["method"] == "entropy"
    assert record["settings"]["importance_method"] is None
    estimated = evaluate_fidelity(model, passages, small(selects=(0.5,), prompts=0)).to_dict()
    assert estimated["settings"]["importance_method"] == "entropy"


def test_kl_divergence():
    p = torch.tensor([[0.0, 1.0, 2.0]])
    assert kl_divergence(p, p).item() == 0.0
    q = torch.tensor([[2.0, 1.0, 0.0]])
    lp, lq = torch.log_softmax(p.double(), -1), torch.log_softmax(q.double(), -1)
    assert kl_divergence(p, q).item() == pytest.approx(float((lp.exp() * (lp - lq)).sum()))
    assert kl_divergence(p, q).item() > 0


def test_table_markdown_and_plot(report, tmp_path):
    record = report.to_dict()
    table = format_table(record)
    assert len(table.splitlines()) == 1 + len(record["rows"])
    assert "bpb@0.15 (delta)" in table and "KL commit" in table
    md = format_markdown(record)
    assert md.splitlines()[1].startswith("|---|") and md.count("\n") == len(record["rows"]) + 1
    out = plot_fidelity(record, tmp_path / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dream_family_select_one_equals_dense(passages):
    torch.manual_seed(0)
    config = ModelConfig(family="dream", vocab_size=V, hidden_size=32, n_layers=2, n_heads=4,
                         n_kv_heads=2, intermediate_size=48, max_seq_len=64, mask_id=MASK)
    rep = evaluate_fidelity(Transformer(config).eval(), passages,
                            small(selects=(0.5, 1.0), modes=("uniform",), mask_ratios=(0.5,)))
    dense, half, full = rep.rows
    assert full.nll[0]["bits"] == dense.nll[0]["bits"]
    assert (full.token_agreement, full.kl_final, full.kl_commit) == (1.0, 0.0, 0.0)
    assert half.keep_gen == pytest.approx(0.5, abs=1e-12) and half.kl_commit > 0
