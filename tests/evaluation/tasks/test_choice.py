"""Multiple choice: CSV (MMLU layout) and JSONL parsing, prompts, shots, scoring, bad input."""

from __future__ import annotations

import json

import pytest

from adaptive_dllm.datafiles import read_choice
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks import get_task
from adaptive_dllm.evaluation.tasks.choice import make_task

CSV = '''question,A,B,C,D,answer
"What is 2 + 2, in words?",three,four,five,six,B
Capital of France?,Paris,Rome,Berlin,Madrid,a
Largest planet?,Mars,Venus,Jupiter,Earth,C
'''


@pytest.fixture
def csv_file(tmp_path):
    f = tmp_path / "mmlu.csv"
    f.write_text(CSV)
    return f


def test_csv_in_mmlu_layout(csv_file):
    qs = read_choice(csv_file)
    assert [q.answer for q in qs] == [1, 0, 2]
    assert qs[0].question == "What is 2 + 2, in words?" and qs[0].choices == ("three", "four", "five", "six")
    assert qs[0].line == 2
    headerless = csv_file.with_name("plain.csv")
    headerless.write_text("\n".join(CSV.splitlines()[1:]) + "\n")
    assert read_choice(headerless) == [q.__class__(q.question, q.choices, q.answer, q.line - 1) for q in qs]


def test_jsonl_with_index_or_letter(tmp_path):
    f = tmp_path / "arc.jsonl"
    f.write_text(json.dumps({"question": "Sky?", "choices": ["green", "blue", "red"], "answer": 1}) + "\n\n"
                 + json.dumps({"question": "Sun?", "choices": ["hot", "cold"], "answer": "A"}) + "\n")
    qs = read_choice(f)
    assert [(q.answer, len(q.choices), q.line) for q in qs] == [(1, 3, 1), (0, 2, 3)]


def test_letters_prompt_candidates_and_score(csv_file):
    task = get_task("choice", data=csv_file)
    assert task.kind == "loglikelihood"
    item = task.items()[0]
    assert item.prompt == "What is 2 + 2, in words?\nA. three\nB. four\nC. five\nD. six\nAnswer:"
    assert item.choices == (" A", " B", " C", " D") and item.target == "1"
    assert task.score(item, [-3.0, -1.0, -2.0, -9.0]) == {"correct": 1.0, "correct_norm": 1.0, "pred": 1}
    assert task.score(item, [-0.5, -1.0, -2.0, -9.0])["correct"] == 0.0
    with pytest.raises(AdllmError, match="one finite log-likelihood per choice"):
        task.score(item, [-1.0, -2.0])
    with pytest.raises(AdllmError, match="one finite log-likelihood per choice"):
        task.score(item, [float("nan")] * 4)


def test_texts_format_and_length_normalisation(csv_file):
    task = make_task(data=csv_file, format="texts")
    item = task.items(limit=1)[0]
    assert item.prompt == "What is 2 + 2, in words?\nAnswer:"
    assert item.choices == (" three", " four", " five", " six")
    # " three" (6 chars) at -5.4 beats " four" (5 chars) at -5.5 raw, loses after normalising
    out = task.score(item, [-5.4, -5.5, -20.0, -20.0])
    assert out["pred"] == 0 and out["correct"] == 0.0 and out["correct_norm"] == 0.0
    out = task.score(item, [-6.0, -5.5, -20.0, -20.0])
    assert out["correct"] == 1.0


def test_shots_exclude_the_item_and_are_deterministic(csv_file):
    task = make_task(data=csv_file, shots=2, seed=3)
    items = task.items()
    for item, q in zip(items, task._questions, strict=True):
        blocks = item.prompt.split("\n\n")
        assert len(blocks) == 3 and blocks[-1].startswith(q.question)
        assert all(not b.startswith(q.question) for b in blocks[:-1])
        assert all(b.rsplit("Answer:", 1)[1] in (" A", " B", " C") for b in blocks[:-1])
    assert [i.prompt for i in make_task(data=csv_file, shots=2, seed=3).items()] == [i.prompt for i in items]
    assert task.settings()["shots"] == 2


@pytest.mark.parametrize(("text", "message"), [
    ("q,a,b\n", r"bad.csv:1 has 3 column\(s\)"),
    ("q,a,b,c,E\n", r"bad.csv:1 answer 'E' is not one of the 3 choices"),
    ("q,a,b,c,maybe\n", r"bad.csv:1 answer 'maybe' must be a letter"),
    ("\n\n", r"holds no questions"),
])
def test_malformed_csv_rows(tmp_path, text, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(AdllmError, match=message) as err:
        make_task(data=bad)
    assert "\n" not in str(err.value)


def test_malformed_jsonl_and_missing_data(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["only one"], "answer": 0}\n')
    with pytest.raises(AdllmError, match=r"bad.jsonl:1 needs a string 'question'"):
        make_task(data=bad)
    with pytest.raises(AdllmError, match="ships no data"):
        make_task()
    with pytest.raises(AdllmError, match="does not exist"):
        make_task(data=tmp_path / "none.csv")
    with pytest.raises(AdllmError, match="choice format"):
        make_task(data=bad, format="words")
