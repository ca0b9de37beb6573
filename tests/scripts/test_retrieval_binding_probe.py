"""scripts/retrieval_binding_probe.py: needle parsing, and a record whose per-head shares are
well formed (on the bundled retrieval model, 512 bytes, dense, CPU)."""

from __future__ import annotations

import json

import pytest

from adaptive_dllm.evaluation.tasks.retrieval import make_task
from adaptive_dllm.models import load


@pytest.fixture(scope="module")
def probe(load_script):
    return load_script("retrieval_binding_probe")


def test_needle_numbers_finds_every_needle_and_the_asked_one(probe):
    _, tok = load("retrieval", device="cpu")
    item = make_task(tokenizer=tok, length=512, kinds=["niah_multikey"], n=3, seed=0).item(
        "niah_multikey", 1)
    spans, asked = probe.needle_numbers(item.prompt)
    assert len(spans) == 4  # the task's default: 3 distractors
    assert item.prompt[slice(*spans[asked])] == item.target
    assert all(len(item.prompt[a:b]) == 7 for a, b in spans)


def test_record_is_well_formed(probe, tmp_path):
    out = tmp_path / "probe.jsonl"
    assert probe.main(["--lengths", "512", "--items", "2", "--no-generate", "--out", str(out)]) == 0
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["length"] == 512 and rec["needles"] == [4] and rec["chance"] == 0.25
    assert rec["accuracy"] is None  # --no-generate
    for row_s, row_h, row_m in zip(rec["selectivity"], rec["hit"], rec["numbers_mass"], strict=True):
        assert all(0 <= v <= 1 + 1e-9 for v in row_s + row_h + row_m)
    assert rec["readers"] == sum(m >= rec["reader_mass"] for row in rec["numbers_mass"] for m in row)


def test_out_is_checked_before_the_work(probe, tmp_path):
    from adaptive_dllm.errors import AdllmError

    with pytest.raises(AdllmError):
        probe.main(["--lengths", "512", "--items", "1", "--out", str(tmp_path / "no" / "x.jsonl")])


def test_relay_spaces_the_needles_and_keeps_the_rest(probe):
    _, tok = load("retrieval", device="cpu")
    task = make_task(tokenizer=tok, length=512, kinds=["niah_multikey"], n=2, seed=0)
    item = task.item("niah_multikey", 0)
    filler = task.haystack.read_text(errors="replace")
    for gap in (0, 200):
        laid = probe.relay(item.prompt, filler, gap, 2048, 0)
        assert 1800 <= len(laid) <= 2048
        assert laid.split("\n\n")[0] == item.prompt.split("\n\n")[0]  # the intro
        assert laid.endswith(item.prompt[item.prompt.rindex("\n\n"):])  # the question
        spans, asked = probe.needle_numbers(laid)
        assert len(spans) == 4 and laid[slice(*spans[asked])] == item.target
        between = [spans[j + 1][0] - spans[j][1] for j in range(3)]
        assert all(b < 60 for b in between) if gap == 0 else all(b > 100 for b in between)
