"""scripts/retrieval_study.py on the bundled tiny model at 512 bytes: every step writes parseable
records, a rerun skips finished cells (a cut record is redone), calibration items differ from the
test items, and the needle mass is a well-formed share of the attention."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from adaptive_dllm.attention import mass as scoring
from adaptive_dllm.evaluation.tasks.retrieval import make_task
from adaptive_dllm.models import load

TINY = Path(__file__).resolve().parents[2] / "src" / "adaptive_dllm" / "models" / "tiny"
PROVENANCE = ("command", "commit", "device", "torch", "date")


@pytest.fixture(scope="module")
def study(load_script):
    return load_script("retrieval_study")


@pytest.fixture(scope="module")
def heads(study):
    return sys.modules["retrieval_study_heads"]


@pytest.fixture(scope="module")
def tiny():
    return load(str(TINY), device="cpu")


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--model", str(TINY), "--device", "cpu", "--out", str(out), "--length", "512",
            "--items", "2", "--kinds", "passkey", "--selects", "0.3", "--estimators",
            "entropy,headig", "--scopes", "global,per_layer", "--block-size", "64",
            "--calib-items", "2", "--headig-n", "1", "--headig-steps", "1", "--headig-mask-ratios",
            "1.0", "--head-items", "2", "--top-k", "4", "--prune-items", "1", "--prune-seeds", "1",
            "--gen-length", "8",
            *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(study, tmp_path_factory):
    """One full tiny study (module-scoped: the tests below read its files)."""
    out = tmp_path_factory.mktemp("study") / "results"
    assert study.main(_argv(out)) == 0
    return out


@pytest.mark.slow
def test_every_step_writes_parseable_records(run):
    calib = _lines(run / "calibration.jsonl")
    assert sorted(r["estimator"] for r in calib) == ["entropy", "headig"]
    assert all((run / r["path"]).is_file() and "--data-kind jsonl" in r["cli"] for r in calib)
    headig = next(r for r in calib if r["estimator"] == "headig")
    assert headig["settings"]["steps"] == 1 and "--steps 1" in headig["cli"]
    acc = _lines(run / "accuracy.jsonl")
    rules = sorted(r["rule"] for r in acc)
    assert rules == ["dense", "entropy-global", "entropy-per_layer", "headig-global",
                     "headig-per_layer", "uniform"]
    for r in acc:
        assert all(r[key] for key in PROVENANCE) and r["n"] == 2
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["keep"] == 1.0 if r["rule"] == "dense" else 0.0 < r["keep"] < 1.0
        assert len(_lines(run / r["results_file"])) == 1 + 2  # header + one line per item
    per_layer = next(r for r in acc if r["rule"] == "entropy-per_layer")
    assert per_layer["scope"] == "per_layer" and per_layer["mode"] == "adaptive"
    prune = _lines(run / "prune.jsonl")
    assert sorted((r["estimator"], r["which"]) for r in prune) == [
        ("entropy", "least"), ("entropy", "most"), ("headig", "least"), ("headig", "most"),
        ("none", "none"), ("random", "random")]
    for r in prune:  # 25% of 8 x 8 heads, and the unpruned baseline on the same item
        assert r["n_pruned"] == len(r["pruned"]) == (0 if r["which"] == "none" else 16)
    most = next(r for r in prune if r["which"] == "most" and r["estimator"] == "headig")
    scores = torch.tensor(next(r for r in calib if r["estimator"] == "headig")["scores"])
    assert sorted(scores[i, j].item() for i, j in most["pruned"]) == sorted(scores.flatten().tolist())[-16:]
    table = (run / "fidelity_tables.md").read_text()
    assert "| headig-per_layer |" in table and "(0." in table  # cells carry keep ratios
    assert (run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_needle_mass_records_are_shares_of_attention(run):
    records = _lines(run / "heads.jsonl")
    mass = next(r for r in records if r["record"] == "needle_mass")
    block, span, prompt = (torch.tensor(mass[k]) for k in ("block_mass", "span_mass", "prompt_mass"))
    assert block.shape == (8, 8)
    assert (span >= 0).all() and (span <= block + 1e-9).all() and (block <= prompt + 1e-9).all()
    assert (prompt <= 1 + 1e-6).all() and (prompt > 0).all() and block.sum() > 0
    ranking = [r for r in records if r["record"] == "head_ranking"]
    assert sorted(r["estimator"] for r in ranking) == ["entropy", "headig"]
    for r in ranking:
        assert -1 <= r["spearman"] <= 1 and len(r["top_heads"]) == 4
        assert torch.tensor(r["budget_weights_kv"]).mean().item() == pytest.approx(1.0)


@pytest.mark.slow
def test_rerun_skips_done_cells_and_redoes_a_cut_one(study, run, monkeypatch):
    cells = sys.modules["retrieval_study_cells"]
    acc_path = run / "accuracy.jsonl"
    before = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
    lines = acc_path.read_bytes().splitlines(keepends=True)
    acc_path.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # a run killed mid-write
    real, calls = cells.evaluate_task, []
    monkeypatch.setattr(cells, "evaluate_task", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(cells, "needle_mass", lambda *a, **k: pytest.fail("needle mass redone"))
    assert study.main(_argv(run)) == 0
    assert len(calls) == 1  # only the cut cell (its items come from its results file)
    after = _lines(acc_path)
    assert [r["cell"] for r in after] == [json.loads(x)["cell"] for x in lines]
    for name, data in before.items():
        if name not in ("accuracy.jsonl", f"calibration_items_L{512}.jsonl"):
            assert (run / name).read_bytes() == data, name


@pytest.mark.slow
def test_calibration_items_differ_from_test_items(study, run, tiny):
    calib = _lines(run / "calibration_items_L512.jsonl")
    test = make_task(tokenizer=tiny[1], length=512, kinds=["passkey"], n=2, seed=0).items()
    assert len(calib) == 2
    assert not {c["prompt"] for c in calib} & {t.prompt for t in test}
    assert not {c["target"] for c in calib} & {t.target for t in test}
    assert all(c["completion"] == f" {c['target']}.\n" for c in calib)
    assert study.main(_argv(run, "--calib-seed", "0")) == 2  # the test seed is refused


def test_needle_mass_matches_the_attention_probabilities(heads, tiny, monkeypatch):
    model, tok = tiny
    item = make_task(tokenizer=tok, length=256, kinds=["passkey"], n=1).items()[0]
    ids, start, end = heads.token_span(tok, item.prompt, item.meta["needle_span"])
    assert bytes(ids[start:end]).decode() == f"The pass key is {item.target}. Remember it."
    seen = {}
    original = heads._AnswerAttention.__call__

    def spy(self, layer, q, k, v, key_mask):
        seen.setdefault(layer, (q, k))
        return original(self, layer, q, k, v, key_mask)

    monkeypatch.setattr(heads._AnswerAttention, "__call__", spy)
    got = heads.needle_mass(model, tok, item.prompt, item.target, item.meta["needle_span"],
                            gen_length=16, block_size=32)
    n_answer = len(f" {item.target}")
    assert got["answer_queries"] == n_answer
    q, k = seen[3]  # block_size 1: the library's exact per-query-head attention probabilities
    probs = scoring.block_mass(q, k, block_size=1, units="query")[0, :, len(ids):len(ids) + n_answer]
    lo, hi = got["needle_blocks"][0] * 32, (got["needle_blocks"][1] + 1) * 32
    assert lo <= start and end <= hi and hi - lo <= 32 * math.ceil((end - start) / 32 + 1)
    torch.testing.assert_close(got["block"][3], probs[..., lo:hi].sum(-1).mean(-1).double(),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["span"][3], probs[..., start:end].sum(-1).mean(-1).double(),
                               atol=1e-5, rtol=1e-4)


def test_spearman_ranks_ties_and_constants(heads):
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert heads.spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert heads.spearman(a, -a) == pytest.approx(-1.0)
    assert heads.spearman(a, torch.ones(2, 2)) is None
    assert heads.ranks(torch.tensor([5.0, 1.0, 5.0])).tolist() == [2.5, 1.0, 2.5]
    # with ties: ranks [1.5, 1.5, 3] vs [1, 2, 3] -> Pearson of the ranks
    assert heads.spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == \
        pytest.approx(math.sqrt(3) / 2)
    assert heads.group_sums(torch.arange(8.0).reshape(1, 8), 2).tolist() == [[6.0, 22.0]]


def test_provenance_names_the_commit_it_is_given(study, monkeypatch):
    # A copy of the tree on the GPU machine carried a stale .git: records named the session's
    # first commit, not the one that ran. ADLLM_GIT_COMMIT (set by the device scripts) wins.
    monkeypatch.setenv("ADLLM_GIT_COMMIT", "abc1234")
    assert study.provenance([])["commit"] == "abc1234"
    monkeypatch.delenv("ADLLM_GIT_COMMIT")
    assert study.provenance([])["commit"] != "abc1234"


def test_batch_size_is_checked(study, tmp_path):
    from adaptive_dllm.errors import AdllmError

    with pytest.raises(AdllmError, match="--batch-size 0"):
        study.parse_args(_argv(tmp_path, "--batch-size", "0"))
