"""GSM8K: shipped data, both answer rules on tricky numbers, few-shot determinism and no leaks."""

from __future__ import annotations

import json

import pytest

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks import get_task
from adaptive_dllm.evaluation.tasks.gsm8k import extract_answer, make_task, normalize_number


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.mark.parametrize(("text", "value"), [
    ("1,000", "1000"), ("$1,000.00", "1000"), ("18.", "18"), ("10.0", "10"), ("-3", "-3"),
    ("0.50", "0.5"), ("$5", "5"), ("1,234,567.25", "1234567.25"), ("-0", "0"), ("abc", None),
])
def test_normalize_number(text, value):
    assert normalize_number(text) == value


@pytest.mark.parametrize(("completion", "strict", "flexible"), [
    (" She makes 9 * 2 = $18.\n#### 18", "18", "18"),
    (" 5 + 5 = 10\n#### 1,000\nThen 7", "1000", "7"),  # strict takes ####, flexible the last number
    (" The answer is $1,200.00.", None, "1200"),
    (" #### -4.50", "-4.5", "-4.5"),
    (" no number here", None, None),
    (" 3 apples and 4 pears, total 7.", None, "7"),
    (" ####42", "42", "42"),
])
def test_answer_rules(completion, strict, flexible):
    assert extract_answer(completion, "strict") == strict
    assert extract_answer(completion, "flexible") == flexible


def test_shipped_test_split_and_scores(task):
    items = task.items()
    assert len(items) == 1319 and len({i.id for i in items}) == 1319
    assert items[0].target == "18" and items[0].prompt.endswith("Answer:")
    first = items[0]
    assert task.score(first, [" 16 - 3 - 4 = 9, 9 * 2 = 18\n#### 18"]) == {
        "correct": 1.0, "strict": 1.0, "flexible": 1.0, "n": 1}
    assert task.score(first, [" it is 18 dollars"])["strict"] == 0.0
    assert task.score(first, [" it is 18 dollars", "#### 17"]) == {
        "correct": 0.5, "strict": 0.0, "flexible": 0.5, "n": 2}
    with pytest.raises(AdllmError, match="completion strings"):
        task.score(first, [])


def test_prompt_layout_matches_lm_eval(task):
    prompt = task.items(limit=1)[0].prompt
    blocks = prompt.split("\n\n")
    shots = task.exemplars(0)
    assert len(shots) == 5
    for block, (q, a) in zip(blocks, shots, strict=False):
        assert block.startswith(f"Question: {q}\nAnswer: ") and a.rsplit("####", 1)[1].strip() in block
    assert prompt.endswith(f"Question: {json.loads(task.data.read_text().splitlines()[0])['question']}"
                           "\nAnswer:")


def test_fewshot_is_per_item_deterministic_and_seeded(task):
    a = task.items(limit=5)
    assert [i.prompt for i in make_task().items(limit=5)] == [i.prompt for i in a]
    assert make_task().items()[3].prompt == a[3].prompt  # limit does not change a prompt
    assert make_task(seed=1).items(limit=1)[0].prompt != a[0].prompt
    assert len({tuple(task.exemplars(i)) for i in range(5)}) == 5  # items get different shots
    zero = make_task(shots=0).items(limit=1)[0]
    assert zero.prompt.startswith("Question: ") and zero.prompt.count("Question:") == 1


def test_no_test_question_in_the_fewshot_pool(task):
    test_questions = {q for q, _ in task._problems}
    assert not test_questions & {q for q, _ in task._pool}


def test_exemplar_equal_to_the_item_is_never_drawn(tmp_path):
    # Evaluating on the few-shot pool itself: an item never sees its own solution.
    pool = make_task().fewshot_data
    lines = pool.read_text().splitlines()[:7]
    small = tmp_path / "pool.jsonl"
    small.write_text("\n".join(lines) + "\n")
    t = make_task(data=small, fewshot_data=small, shots=6)
    for i, (q, _) in enumerate(t._problems):
        assert q not in [s[0] for s in t.exemplars(i)]


def test_settings_change_with_the_data(tmp_path, task):
    row = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps(row) + "\n")
    mine = get_task("gsm8k", data=f, shots=2)
    assert [i.target for i in mine.items()] == ["5"]
    assert mine.settings()["data_sha256_16"] != task.settings()["data_sha256_16"]
    assert mine.settings()["shots"] == 2
    assert task.generation_defaults()["gen_length"] == 256


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(AdllmError, match="does not exist"):
        make_task(data=tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a #### 1"}\nnot json\n')
    with pytest.raises(AdllmError, match=r"bad.jsonl:2 is not valid JSON") as err:
        make_task(data=bad)
    assert "\n" not in str(err.value)
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(AdllmError, match=r"bad.jsonl:1 lacks string field\(s\) 'answer'"):
        make_task(data=bad)
    bad.write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(AdllmError, match=r"bad.jsonl:1 answer has no '####'"):
        make_task(data=bad)
    with pytest.raises(AdllmError, match="shots must be"):
        make_task(shots=-1)
    with pytest.raises(AdllmError, match="unknown task"):
        get_task("gsm9k")
