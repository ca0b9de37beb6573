"""The shared data-file readers: JSONL (plain and gzipped), line numbers in errors."""

from __future__ import annotations

import gzip
import json

import pytest

from adaptive_dllm.datafiles import read_gsm8k, read_jsonl
from adaptive_dllm.errors import AdllmError


def test_read_jsonl_plain_and_gzipped_with_line_numbers(tmp_path):
    rows = [{"a": 1}, {"a": 2}]
    text = json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n"
    plain = tmp_path / "x.jsonl"
    plain.write_text(text)
    packed = tmp_path / "x.jsonl.gz"
    with gzip.open(packed, "wt") as f:
        f.write(text)
    assert read_jsonl(plain) == read_jsonl(packed) == [(1, rows[0]), (3, rows[1])]


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]\n", r"x.jsonl:1 must be a JSON object, got list"),
    ('{"question": "q", "answer": "#### 1"}\n{"question": 3, "answer": "#### 1"}\n',
     r"x.jsonl:2 lacks string field\(s\) 'question'"),
    ("   \n", "holds no records"),
])
def test_errors_are_one_line_and_name_the_line(tmp_path, text, message):
    f = tmp_path / "x.jsonl"
    f.write_text(text)
    with pytest.raises(AdllmError, match=message) as err:
        read_gsm8k(f)
    assert "\n" not in str(err.value)
    with pytest.raises(AdllmError, match="does not exist"):
        read_gsm8k(tmp_path / "none.jsonl")
