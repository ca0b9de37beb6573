"""The record scripts of this session's docs audit: the pure parts that turn generations and
study outputs into the numbers the docs quote (commit steps, per-block agreement, speaker-line
counts, the importance study's tables)."""

from __future__ import annotations

import json

import pytest
import torch


def test_commit_steps_is_the_first_forward_after_which_a_position_is_unmasked(load_script):
    order = load_script("retrieval_commit_order")
    m = 9
    history = torch.tensor([[m, m, m], [m, 5, m], [m, 5, 7], [4, 5, 7]])[:, None, :]  # (F+1, 1, G)
    assert order.commit_steps(history, m) == [3, 1, 2]


def test_per_block_agreement_averages_prompts_within_each_block(load_script):
    diag = load_script("fidelity_diagnostics")
    dense = torch.zeros(2, diag.GEN, dtype=torch.long)
    ids = dense.clone()
    ids[0, diag.BLOCK:] = 1  # prompt 0 parts after its first block, prompt 1 never
    assert diag.per_block_agreement(ids, dense) == [1.0] + [0.5] * (diag.GEN // diag.BLOCK - 1)


def test_corpus_facts_count_rewritten_and_missed_speaker_lines(load_script, fake_corpus):
    facts = load_script("tiny_card_facts")
    play = b"\nROMEO.\nBut soft!\n\nJul.\nAy me.\n\nKING. \nMissed, trailing space.\n"
    (fake_corpus / "hamlet_gut.txt").write_bytes(play * 3)
    c = facts.corpus_facts(fake_corpus)
    assert (c["speaker_lines_rewritten"], c["speaker_lines_missed_trailing_space"]) == (6, 3)
    assert c["speaker_lines_missed_by_work"] == {"hamlet": 3}
    assert c["train_works"] == 2 and c["train_bytes"] + c["heldout_bytes"] == c["normalized_bytes"]


def _write(path, obj):
    path.write_text(json.dumps(obj))


def test_importance_report_tables_come_from_the_records(load_script, tmp_path, capsys, monkeypatch):
    report = load_script("importance_study_report")
    summary = {f"nll@{r}": {"baseline": 1.0, "most": 2.0, "least": 1.1, "random_mean": 1.5,
                            "random_std": 0.25} for r in report.RATIOS}
    summary["nll_mean"] = {"baseline": 1.0, "most": 3.0, "least": 1.2, "random_mean": 2.0,
                           "random_std": 0.5}
    _write(tmp_path / "prune_headig_s0_0.25.json", {"summary": summary})
    _write(tmp_path / "compare_headig_s0_headig_s1.json",
           {"a": "x/headig_s0.safetensors", "b": "x/headig_s1.safetensors", "spearman": 0.9,
            "pearson": 0.8, "top_k": 16, "top_overlap": 0.75, "bottom_overlap": 1.0})
    row = {"select": 0.1, "keep_nll": 0.1, "token_agreement": 0.3, "kl_commit": 4.5,
           "nll": [{"bits": 1.0, "delta": 0.01}] * 3}
    _write(tmp_path / "fidelity_headig.json", {"rows": [{**row, "mode": "dense", "select": 1.0},
                                                        {**row, "mode": "adaptive"}]})
    uniform = tmp_path / "uniform.json"
    _write(uniform, {"rows": [{**row, "mode": "uniform"}, {**row, "mode": "uniform", "select": 0.5}]})
    monkeypatch.setattr("sys.argv", ["report", str(tmp_path), "--uniform", str(uniform)])
    report.main()
    out = capsys.readouterr().out
    assert "| 16 of 64 (25%) | 3.000 | 1.200 | 2.000 ± 0.500 |" in out
    assert ("| HeadIG, all four works, seed 0 | HeadIG, all four works, seed 1 (other masks and STP "
            "thresholds) | 0.900 | 0.800 | 12/16 | 16/16 |") in out
    assert "| HeadIG adaptive | 0.10 |" in out and "| uniform | 0.10 |" in out
    assert "| uniform | 0.50 |" not in out  # only the selects the HeadIG rows were run at


@pytest.mark.parametrize("name", ["fidelity_diagnostics", "retrieval_commit_order",
                                  "tiny_card_facts", "importance_study_report"])
def test_record_scripts_refuse_to_run_without_their_required_arguments(load_script, name,
                                                                        monkeypatch):
    monkeypatch.setattr("sys.argv", [name])
    with pytest.raises(SystemExit) as exit_:
        load_script(name).main()
    assert exit_.value.code == 2


# -- scripts/fast_preset_report.py ---------------------------------------------------------------
def test_binomial_upper_bound_matches_the_closed_form_and_known_values(load_script):
    report = load_script("fast_preset_report")
    assert report.binomial_upper(0, 300) == pytest.approx(1 - 0.05 ** (1 / 300), rel=1e-9)
    assert report.binomial_upper(3, 400) == pytest.approx(0.01927, abs=2e-5)  # Clopper-Pearson
    assert report.binomial_upper(5, 5) == 1.0
    with pytest.raises(ValueError):
        report.binomial_upper(4, 3)


def _cell(directory, name, seed, correct, forwards):
    header = {"adllm_task_results": 1, "settings": {"task_settings": {"seed": seed}}}
    rows = [{"id": f"retrieval/{kind}/{i}", "mode": "dense", "metrics": {"correct": ok},
             "forwards": forwards, "outputs": [str(ok)]}
            for i, (kind, ok) in enumerate(correct)]
    (directory / f"{name}.jsonl").write_text(
        "\n".join(json.dumps(r) for r in [header, *rows]) + "\n")


def test_the_report_pairs_items_over_seeds_and_counts_losses_and_gains(load_script, tmp_path):
    report = load_script("fast_preset_report")
    for seed in (0, 1):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        ref = [("passkey", 1.0), ("passkey", 1.0), ("vt", 0.0), ("vt", 1.0)]
        fast = [("passkey", 1.0), ("passkey", 0.0), ("vt", 1.0), ("vt", 1.0)]
        _cell(d, report.REFERENCE, seed, ref, 32)
        _cell(d, "cache-prefix_threshold-0.9", seed, fast, 2)
    assert report.main([str(tmp_path / "seed0"), str(tmp_path / "seed1")]) == 0
    cells = json.loads((tmp_path / "seed0" / "fast_preset.json").read_text())["cells"]
    fast = cells["cache-prefix_threshold-0.9"]
    assert (fast["n"], fast["losses"], fast["gains"]) == (8, 2, 2)  # items of both seeds
    assert fast["accuracy_change"] == 0.0 and fast["forwards_per_item"] == 2
    assert fast["accuracy_per_kind"] == {"passkey": 0.5, "vt": 1.0}
    lo, hi = fast["change_ci95"]
    assert lo == pytest.approx(-hi) and hi == pytest.approx(1.959964 * 2 / 8)
    assert cells[report.REFERENCE]["losses"] == 0
    assert "| prefix | 0.9 |" in (tmp_path / "seed0" / "fast_preset_tables.md").read_text()
