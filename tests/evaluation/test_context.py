"""Context checks before any generation, few-shot fitting, and task defaults that follow a given
``gen_length``."""

from __future__ import annotations

import pytest

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.context import check_context, fit_shots, longest_prompt
from adaptive_dllm.evaluation.runner import task_sampler
from adaptive_dllm.evaluation.tasks import get_task


class Bytes:
    """One token per UTF-8 byte; a chat template that adds 10 tokens."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())

    def apply_chat_template(self, messages, add_generation_prompt: bool = False) -> str:
        return "<user>" + messages[0]["content"] + "<bot>"


def gsm8k(shots: int):
    return get_task("gsm8k", shots=shots)


def test_longest_prompt_counts_the_chat_template():
    items = gsm8k(0).items(limit=3)
    n, item = longest_prompt(Bytes(), items, chat=False)
    assert n == max(len(it.prompt.encode()) for it in items) and item is not None
    assert longest_prompt(Bytes(), items, chat=True)[0] == n + 11


def test_check_context_names_the_item_and_the_fix():
    task = gsm8k(2)
    items = task.items(limit=3)
    n, item = longest_prompt(Bytes(), items, chat=False)
    check_context(task, items, Bytes(), max_len=n + 16, gen_length=16, chat=False)
    with pytest.raises(AdllmError, match=f"{item.id}.*{n} tokens.*fewer --shots"):
        check_context(task, items, Bytes(), max_len=n + 15, gen_length=16, chat=False)


def test_check_context_suggests_the_largest_retrieval_length():
    task = get_task("retrieval", tokenizer=Bytes(), length=600, n=1)
    with pytest.raises(AdllmError, match="--length of at most 480"):
        check_context(task, task.items(limit=1), Bytes(), max_len=512, gen_length=32, chat=False)


def test_fit_shots_takes_the_most_shots_that_fit():
    tok = Bytes()
    lengths = {k: longest_prompt(tok, gsm8k(k).items(limit=4), chat=False)[0] for k in range(4)}
    assert lengths[0] < lengths[1] < lengths[2] < lengths[3]
    budget = lengths[2] + 8  # 2 shots fit with 8 generated tokens, 3 do not
    fitted = fit_shots(gsm8k, 3, tok, limit=4, max_len=budget, gen_length=8, chat=False)
    assert fitted.settings()["shots"] == 2
    assert fit_shots(gsm8k, 3, tok, limit=4, max_len=10**6, gen_length=8,
                     chat=False).settings()["shots"] == 3
    assert fit_shots(gsm8k, 3, tok, limit=4, max_len=8, gen_length=8,
                     chat=False).settings()["shots"] == 0


def test_task_defaults_follow_a_given_gen_length():
    task = gsm8k(0)  # defaults: gen_length 256, steps 256, block_length 32
    assert task_sampler(task, {}) == {"gen_length": 256, "steps": 256, "block_length": 32}
    assert task_sampler(task, {"gen_length": 16}) == {"gen_length": 16, "steps": 16,
                                                      "block_length": 16}
    assert task_sampler(task, {"gen_length": 64}) == {"gen_length": 64, "steps": 64,
                                                      "block_length": 32}
    given = {"gen_length": 16, "steps": 4, "block_length": 8}
    assert task_sampler(task, given) == given
