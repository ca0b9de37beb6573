"""Retrieval: target length (+-2%) in two tokenizers, determinism, even depths, the answer exactly
once, scoring, the test-seed guard, bad input."""

from __future__ import annotations

import re

import pytest

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks import get_task
from adaptive_dllm.evaluation.tasks.retrieval import (
    DEFAULT_HAYSTACK,
    KINDS,
    TEST_SEEDS,
    check_train_seed,
    make_task,
)
from adaptive_dllm.models.tokenizer import ByteTokenizer


class WordPieces:
    """A BPE tokenizer trained on the haystack: several characters per token, like real models."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        self._tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]"], show_progress=False)
        self._tok.train_from_iterator([DEFAULT_HAYSTACK.read_text()], trainer)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text).ids


@pytest.fixture(scope="module")
def bpe():
    return WordPieces()


@pytest.mark.parametrize("length", [600, 3000, 20000])
def test_length_within_two_percent(bpe, length):
    task = make_task(tokenizer=bpe, length=length, n=2)
    for item in task.items():
        tokens = len(bpe.encode(item.prompt))
        assert tokens == item.meta["length_tokens"]
        assert abs(tokens - length) <= 0.02 * length, (item.id, tokens)
    assert len(bpe.encode(task.items(limit=1)[0].prompt)) < len(task.items(limit=1)[0].prompt) / 2


def test_byte_tokenizer_hits_the_length_exactly():
    items = make_task(tokenizer=ByteTokenizer(), length=5000, n=3).items()
    assert [len(i.prompt.encode()) for i in items] == [5000] * 12


def test_deterministic_per_item_and_seeded(bpe):
    a = make_task(tokenizer=bpe, length=1500, n=3).items()
    b = make_task(tokenizer=bpe, length=1500, n=3).items()
    assert [(i.id, i.prompt, i.target) for i in a] == [(i.id, i.prompt, i.target) for i in b]
    # an item does not depend on which kinds or how many items come with it
    only = make_task(tokenizer=bpe, length=1500, n=3, kinds=("vt",)).items()
    assert only[1].prompt == next(i for i in a if i.id == "retrieval/vt/1").prompt
    assert make_task(tokenizer=bpe, length=1500, n=3).items(limit=5)[4].prompt == a[4].prompt
    other = make_task(tokenizer=bpe, length=1500, n=3, seed=1).items()
    assert all(x.target != y.target for x, y in zip(a, other, strict=True))


def test_depths_are_even_and_the_needle_sits_there():
    n = 5
    task = make_task(tokenizer=ByteTokenizer(), length=20000, n=n)
    for kind in KINDS:
        items = [i for i in task.items() if i.meta["kind"] == kind]
        assert [i.meta["depth"] for i in items] == [0.0, 0.25, 0.5, 0.75, 1.0]
        for item in items:
            start, end = item.meta["needle_span"]
            haystack_start = item.prompt.index("\n\n") + 2
            haystack_end = item.prompt.rindex("\n\n")
            where = (start - haystack_start) / (haystack_end - haystack_start)
            assert abs(where - item.meta["depth"]) < 0.02, (item.id, where)
            needle = item.prompt[start:end]
            assert "\n" not in needle and item.prompt[start - 1] == "\n"
            key = item.target.split()[0]
            assert key in needle


def test_answer_occurs_exactly_once(bpe):
    for item in make_task(tokenizer=bpe, length=4000, n=4).items():
        if item.meta["kind"] == "vt":
            names = item.target.split()
            assert len(names) == 4
            for name in names:
                assert item.prompt.count(f"VAR {name} =") == 1
            value = re.search(r"assigned the value (\d+)", item.prompt).group(1)
            assert item.prompt.count(value) == 3  # the assignment and twice in the question
        else:
            assert item.prompt.count(item.target) == 1, item.id
        if item.meta["kind"] == "niah_multikey":
            assert item.prompt.count("One of the special magic numbers for") == 4


def test_scoring():
    task = make_task(tokenizer=ByteTokenizer(), length=800, n=1)
    passkey, *_, vt = task.items()
    assert task.score(passkey, [f" {passkey.target}. The rest"]) == {"correct": 1.0, "n": 1}
    assert task.score(passkey, [f" {passkey.target}1"])["correct"] == 0.0
    assert task.score(passkey, [f"\n{passkey.target}"])["correct"] == 1.0  # leading blank stripped
    assert task.score(passkey, [f" no\n{passkey.target}"])["correct"] == 0.0  # only the first line
    names = vt.target.split()
    assert task.score(vt, [" " + ", ".join(reversed(names)) + "."])["correct"] == 1.0
    assert task.score(vt, [" " + ", ".join(names[:-1])])["correct"] == 0.0
    assert task.score(vt, [" " + " ".join(names) + " ABCDE"])["correct"] == 0.0
    with pytest.raises(AdllmError, match="completion strings"):
        task.score(vt, [1.0])


def test_train_seed_guard():
    assert check_train_seed(TEST_SEEDS.stop) == TEST_SEEDS.stop
    for seed in (0, 17, TEST_SEEDS.stop - 1):
        with pytest.raises(AdllmError, match="test seeds"):
            check_train_seed(seed)
    with pytest.raises(AdllmError, match="must lie in the test seeds"):
        make_task(tokenizer=ByteTokenizer(), seed=TEST_SEEDS.stop)


def test_settings_and_custom_haystack(tmp_path):
    text = tmp_path / "hay.txt"
    text.write_text("The grass is green. The sky is blue. The sun is yellow.\n" * 40)
    task = get_task("retrieval", tokenizer=ByteTokenizer(), data=text, length=3000, n=1, kinds=["passkey"])
    (item,) = task.items()
    assert len(item.prompt.encode()) == 3000 and "The grass is green." in item.prompt
    settings = task.settings()
    assert settings["haystack"] == "hay.txt" and settings["kinds"] == ["passkey"]
    assert settings != make_task(tokenizer=ByteTokenizer(), length=3000, n=1, kinds=["passkey"]).settings()


def test_bad_input(tmp_path):
    with pytest.raises(AdllmError, match="needs the model's tokenizer"):
        make_task()
    with pytest.raises(AdllmError, match="unknown retrieval kind"):
        make_task(tokenizer=ByteTokenizer(), kinds=("passkey", "haystack"))
    with pytest.raises(AdllmError, match="does not exist"):
        make_task(tokenizer=ByteTokenizer(), data=tmp_path / "none.txt")
    (tmp_path / "w.bin").write_bytes(b"\0" * 400)  # found by an audit: read as text before
    with pytest.raises(AdllmError, match="haystack file .* looks binary"):
        make_task(tokenizer=ByteTokenizer(), data=tmp_path / "w.bin")
    with pytest.raises(AdllmError, match="too short"):
        make_task(tokenizer=ByteTokenizer(), length=100, kinds=("vt",)).items()
    with pytest.raises(AdllmError, match="zero-shot"):
        make_task(tokenizer=ByteTokenizer(), shots=3)


def test_kinds_from_one_comma_separated_string():
    # --task-option kinds=passkey,vt arrives as one string (was split into characters).
    task = make_task(tokenizer=ByteTokenizer(), length=600, n=1, kinds="passkey, vt")
    assert task.settings()["kinds"] == ["passkey", "vt"]
    assert [it.meta["kind"] for it in task.items()] == ["passkey", "vt"]
