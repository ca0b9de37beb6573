"""``adllm eval task``: strict JSON, resumable --out, one-line errors with exit status 2."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from adaptive_dllm.evaluation.tasks import base

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
import toy_tasks  # noqa: E402

FAST = ["--gen-length", "16", "--steps", "16", "--block-length", "16", "--block-size", "32"]


@pytest.fixture(autouse=True)
def toy_task(monkeypatch):
    """Tasks "toy" (generate) and "toychoice" resolved through get_task like the real ones."""
    for name, kind in (("toy", "generate"), ("toychoice", "loglikelihood")):
        module = types.ModuleType(f"adaptive_dllm.evaluation.tasks.{name}")
        module.make_task = lambda kind=kind, **o: toy_tasks.make_task(kind=kind, **{"n": 3, **o})
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setitem(base.TASKS, name, name)


def test_json_output_is_strict_and_complete(eval_task):
    code, out, _ = eval_task("toy", "--modes", "dense,uniform", "--select", "0.5", "--json",
                       "--limit", "2", *FAST)
    assert code == 0
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert set(data) == {"task", "model", "sampler", "results"} and data["task"] == "toy"
    assert data["sampler"]["steps"] == int(FAST[FAST.index("--steps") + 1])
    assert [(r["mode"], r["select"]) for r in data["results"]] == [("dense", 1.0), ("uniform", 0.5)]
    for r in data["results"]:
        assert {"mode", "select", "n", "accuracy", "ci95", "metrics", "tokens_per_s",
                "realized_keep_ratio"} <= set(r)
        assert r["n"] == 2 and len(r["ci95"]) == 2 and "correct" in r["metrics"]


def test_default_modes_follow_importance(eval_task):
    code, out, _ = eval_task("toy", "--json", "--limit", "1", *FAST)
    assert code == 0
    assert [r["mode"] for r in json.loads(out)["results"]] == ["dense", "uniform"]


def test_table_and_resume_through_the_cli(eval_task, tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["toy", "--modes", "dense", "--out", str(out), *FAST]
    code, text, _ = eval_task(*args, "--limit", "1")
    assert code == 0 and "accuracy" in text and "95% CI" in text
    assert len(out.read_text().splitlines()) == 2
    code, text, _ = eval_task(*args)
    assert code == 0 and len(out.read_text().splitlines()) == 4
    code, _, err = eval_task(*args, "--seed", "1")
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["nosuchtask"], "unknown task 'nosuchtask'"),
    (["toy", "--data", "/nonexistent/file.jsonl"], "does not exist"),
    (["toy", "--out", "/nonexistent/dir/r.jsonl"], "does not exist"),
    (["toy", "--modes", "dense,sparse"], "unknown mode"),
    (["toy", "--modes", "adaptive"], "needs head importance"),
    (["toy", "--task-option", "oops"], "KEY=VALUE"),
    (["toy", "--check-harness"], "no harness check"),
    (["toy", "--out", "x.json"], "must end in .jsonl"),
    (["toychoice", "--cache", "prefix"], "scores log-likelihoods and generates nothing"),
])
def test_bad_input_is_one_line_exit_2(eval_task, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = eval_task(*argv, *FAST)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_malformed_data_lines_are_one_line_exit_2(eval_task, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "ROMEO:", "target": "a"}\n{"prompt": broken\n')
    code, _, err = eval_task("toy", "--data", str(data), "--modes", "dense", *FAST)
    assert code == 2 and "line 2" in err and len(err.strip().splitlines()) == 1


def test_model_without_tokenizer_is_one_line_exit_2(eval_task, fixtures_dir):
    code, _, err = eval_task("toy", "--model", str(fixtures_dir / "llada_tiny"), "--modes",
                       "dense", *FAST)
    assert code == 2 and "has no tokenizer" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("threshold", [None, 0.9])
def test_cache_and_threshold_reach_the_sampler_and_the_records(tmp_path, capsys, threshold):
    """``eval task --cache prefix [--threshold 0.9]``: the settings record both, and threshold
    decoding takes fewer forwards than the 32 steps of a fixed schedule (issue #14 item 4)."""
    from adaptive_dllm.cli import main

    out = tmp_path / "cells.jsonl"
    argv = ["eval", "task", "retrieval", "--model", "retrieval", "--length", "256", "--limit", "2",
            "--modes", "dense", "--cache", "prefix", "--device", "cpu", "-q", "--json",
            "--out", str(out)]
    assert main(argv + (["--threshold", str(threshold)] if threshold else [])) == 0
    printed = json.loads(capsys.readouterr().out)
    header, *items = [json.loads(line) for line in out.read_text().splitlines()]
    sampler = header["settings"]["sampler"]
    assert sampler["cache"] == "prefix" and sampler.get("threshold") == threshold
    assert printed["sampler"] == sampler  # --json names the cell too
    assert len(items) == 2 and all(r["metrics"]["correct"] == 1.0 for r in items)
    forwards = [r["forwards"] for r in items]
    assert all(f < 32 for f in forwards) if threshold else forwards == [32, 32]


def test_fast_records_the_options_it_turned_on(tmp_path, capsys):
    """``eval task --fast``: the results file names the preset's cache and threshold, so a
    record never depends on what ``--fast`` meant when it ran."""
    from adaptive_dllm.cli import main
    from adaptive_dllm.generation.cache import FAST_OPTIONS

    out = tmp_path / "fast.jsonl"
    assert main(["eval", "task", "retrieval", "--model", "retrieval", "--length", "256",
                 "--limit", "1", "--modes", "dense", "--device", "cpu", "-q", "--json",
                 "--fast", "--out", str(out)]) == 0
    sampler = json.loads(capsys.readouterr().out)["sampler"]
    header = json.loads(out.read_text().splitlines()[0])
    assert header["settings"]["sampler"] == sampler
    assert {k: sampler[k] for k in FAST_OPTIONS} == dict(FAST_OPTIONS)


def test_fast_on_a_loglikelihood_task_is_refused(eval_task):
    """It would be ignored (nothing is generated) yet recorded in the results header."""
    code, _, err = eval_task("toychoice", "--fast", "--modes", "dense", "--block-size", "32")
    assert code == 2 and "scores log-likelihoods and generates nothing" in err
    assert len(err.strip().splitlines()) == 1


def test_mc_num_on_a_generate_task_is_refused(eval_task):
    """Found by an audit: --mc-num was silently ignored on generate tasks."""
    code, _, err = eval_task("toy", "--mc-num", "4", "--modes", "dense", *FAST)
    assert code == 2 and "--mc-num 4" in err and "drop --mc-num" in err
    assert len(err.strip().splitlines()) == 1


def test_mc_num_reaches_a_loglikelihood_task(eval_task, monkeypatch):
    from adaptive_dllm.evaluation import runner

    seen = []
    real = runner.evaluate_task
    monkeypatch.setattr(runner, "evaluate_task",
                        lambda *a, **k: seen.append(a[3].mc_num) or real(*a, **k))
    code, _, _ = eval_task("toychoice", "--mc-num", "3", "--modes", "dense", "--limit", "1",
                           "--block-size", "32")
    code2, _, _ = eval_task("toychoice", "--modes", "dense", "--limit", "1", "--block-size", "32")
    assert (code, code2) == (0, 0) and seen == [3, 128]
