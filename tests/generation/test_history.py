"""History writers: JSON record contents, atomic replacement, errors before work."""

from __future__ import annotations

import json

import pytest
import torch

from adaptive_dllm._io import atomic_write
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.generation.history import history_record, write_history_json


def test_record_renders_masks_as_underscores():
    hist = torch.tensor([[[9, 9, 9]], [[104, 9, 105]], [[104, 33, 105]]])  # (F, B, G)
    rec = history_record(hist, mask_id=9, decode=lambda ids: bytes(ids).decode())
    assert rec["shape"] == [3, 1, 3]
    assert [t[0] for t in rec["texts"]] == ["___", "h_i", "h!i"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "h.json"
    write_history_json(target, {"old": True})
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("partial")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["h.json"]


def test_strict_json_and_one_line_errors(tmp_path):
    write_history_json(tmp_path / "h.json", {"x": float("nan")})
    assert json.loads((tmp_path / "h.json").read_text(), parse_constant=pytest.fail) == {"x": None}
    assert (tmp_path / "h.json").read_text() == '{"x": null}\n'  # one line, newline-terminated
    with pytest.raises(AdllmError, match="does not exist"):
        write_history_json(tmp_path / "missing" / "h.json", {})
    with pytest.raises(AdllmError, match="is a directory"):
        write_history_json(tmp_path, {})
