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


# Found by an audit: each of these raised a traceback (EOFError, zlib.error, RecursionError,
# IndexError) instead of a one-line error.
def _gz(text: str) -> bytes:
    import io

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
        f.write(text.encode())
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_gzip_file_is_one_line(tmp_path, damage):
    packed = _gz('{"question": "q", "answer": "#### 1"}\n' * 200)
    if damage == "truncated":
        packed = packed[: len(packed) // 2]
    else:
        packed = packed[:20] + bytes(b ^ 0x5A for b in packed[20:-8]) + packed[-8:]
    f = tmp_path / "x.jsonl.gz"
    f.write_bytes(packed)
    with pytest.raises(AdllmError, match="cannot read data file .*whole") as err:
        read_jsonl(f)
    assert "\n" not in str(err.value)


def test_a_deeply_nested_line_is_one_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n' + "[" * 200_000 + "\n")
    with pytest.raises(AdllmError, match="x.jsonl:2 is nested too deeply") as err:
        read_jsonl(f)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_more_choices_than_letters_is_one_line(tmp_path, suffix):
    from adaptive_dllm.datafiles import read_choice

    choices = [f"c{i}" for i in range(30)]
    f = tmp_path / f"q{suffix}"
    if suffix == ".csv":
        f.write_text(",".join(["q", *choices, "A"]) + "\n")
    else:
        f.write_text(json.dumps({"question": "q", "choices": choices, "answer": 0}) + "\n")
    with pytest.raises(AdllmError, match=r"q\.\w+:1 has 30 choices; at most 26 \(A to Z\)") as err:
        read_choice(f)
    assert "\n" not in str(err.value)
