"""A killed task run resumes from its JSONL file to the result of an uninterrupted run."""

from __future__ import annotations

import json

import pytest
from toy_tasks import ToyGenerate

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.runner import RunSettings, evaluate_task

TIMING = ("seconds",)
SETTINGS = RunSettings(modes=("dense", "uniform"), selects=(0.5,), batch_size=2,
                       sparse={"block_size": 32})


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class Killed(BaseException):
    pass


def kill_after(rounds):
    seen = []

    def hook(records):
        seen.append(records)
        if len(seen) == rounds:
            raise Killed

    return hook


@pytest.fixture(scope="module")
def uninterrupted(bundled, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "full.jsonl"
    report = evaluate_task(*bundled, ToyGenerate(n=5), SETTINGS, out=out)
    return report, out


def test_file_has_header_and_one_line_per_item_and_condition(uninterrupted):
    report, out = uninterrupted
    rows = lines(out)
    assert rows[0]["adllm_task_results"] == 1
    assert rows[0]["settings"]["task_settings"] == {"n": 5, "gen_length": 16}
    assert len(rows) == 1 + 5 * 2
    assert strip(sorted(rows[1:], key=lambda r: (r["id"], r["mode"]))) == strip(
        sorted(report.records, key=lambda r: (r["id"], r["mode"])))


def test_killed_run_resumes_to_the_same_result(bundled, uninterrupted, tmp_path):
    full, _ = uninterrupted
    out = tmp_path / "run.jsonl"
    with pytest.raises(Killed):
        evaluate_task(*bundled, ToyGenerate(n=5), SETTINGS, out=out, on_records=kill_after(2))
    assert len(lines(out)) == 1 + 2 * 2  # two units of two items were flushed before the kill
    with out.open("a") as f:  # a record torn by the kill
        f.write('{"id": "toy/4", "mode": "dense", "sel')
    task = ToyGenerate(n=5)
    resumed = evaluate_task(*bundled, task, SETTINGS, out=out)
    assert len(task.scored) == 5 * 2 - 4  # only the missing records were computed
    assert strip(resumed.records) == strip(full.records)
    assert [r.to_dict() | {"tokens_per_s": None} for r in resumed.results] == [
        r.to_dict() | {"tokens_per_s": None} for r in full.results]
    assert len(lines(out)) == 1 + 5 * 2  # the torn line is gone, nothing is duplicated
    again = ToyGenerate(n=5)
    evaluate_task(*bundled, again, SETTINGS, out=out)
    assert again.scored == []  # a finished run recomputes nothing


def test_larger_limit_extends_a_run(bundled, uninterrupted, tmp_path):
    out = tmp_path / "grow.jsonl"
    evaluate_task(*bundled, ToyGenerate(n=5), RunSettings(**{**SETTINGS.__dict__, "limit": 2}),
                  out=out)
    task = ToyGenerate(n=5)
    grown = evaluate_task(*bundled, task, SETTINGS, out=out)
    assert len(task.scored) == 3 * 2
    assert strip(grown.records) == strip(uninterrupted[0].records)


def test_other_settings_are_refused(bundled, uninterrupted, tmp_path):
    out = tmp_path / "copy.jsonl"
    out.write_text(uninterrupted[1].read_text())
    other = RunSettings(**{**SETTINGS.__dict__, "selects": (0.3,)})
    with pytest.raises(AdllmError, match="other settings.*selects"):
        evaluate_task(*bundled, ToyGenerate(n=5), other, out=out)
    with pytest.raises(AdllmError, match="other settings.*task_settings"):
        evaluate_task(*bundled, ToyGenerate(n=5, gen_length=32), SETTINGS, out=out)


def test_malformed_files_are_refused(bundled, uninterrupted, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"something": "else"}\n')
    with pytest.raises(AdllmError, match="not an adllm task results file"):
        evaluate_task(*bundled, ToyGenerate(n=5), SETTINGS, out=bad)
    text = uninterrupted[1].read_text().splitlines()
    bad.write_text("\n".join([text[0], "not json", *text[1:]]) + "\n")
    with pytest.raises(AdllmError, match="line 2 is not a valid record"):
        evaluate_task(*bundled, ToyGenerate(n=5), SETTINGS, out=bad)


@pytest.mark.parametrize("content", [
    b"{\x80\x81 garbage\n",                               # binary: not UTF-8
    b'{"adllm_task_results": 1, "settings": 5}\n',          # a header whose settings are no dict
], ids=["binary", "settings-not-a-dict"])
def test_foreign_files_are_refused_in_one_line_and_kept(bundled, tmp_path, content):
    """Found by an audit: both raised a traceback (UnicodeDecodeError, TypeError)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    with pytest.raises(AdllmError, match="not an adllm task results file"):
        evaluate_task(*bundled, ToyGenerate(n=5), SETTINGS, out=bad)
    assert bad.read_bytes() == content
