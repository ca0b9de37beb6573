"""``adaptive_dllm._io``: output-path checks, atomic writes with umask permissions, strict JSON."""

from __future__ import annotations

import json
import math
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from adaptive_dllm import _io
from adaptive_dllm.errors import AdllmError


def reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_loads(text: str):
    return json.loads(text, parse_constant=reject_constant)


# -- atomic writes ----------------------------------------------------------------------------
def test_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with _io.atomic_write(target) as handle:
            handle.write("new, half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_failure_of_a_path_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(AdllmError, match="could not write .*disk full"):
        with _io.atomic_path(target) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path and not tmp.exists()
            tmp.write_bytes(b"partial")
            raise OSError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_path_writer_result_replaces_the_target(tmp_path):
    target = tmp_path / "plot.svg"
    with _io.atomic_path(target) as tmp:
        tmp.write_text("<svg/>")
    assert target.read_text() == "<svg/>"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.svg"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask_not_mkstemp(tmp_path, umask):
    old = os.umask(umask)
    try:
        _io.write_text(tmp_path / "a.txt", "x")
        _io.write_json(tmp_path / "b.json", {"a": 1})
        with _io.atomic_path(tmp_path / "c.png") as tmp:
            tmp.write_bytes(b"png")
        with _io.atomic_path(tmp_path / "d.safetensors") as tmp:  # creates its files as 0o600
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json", "c.png", "d.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_umask_is_read_correctly(tmp_path):
    old = os.umask(0o027)
    try:
        assert _io._umask() == 0o027
    finally:
        os.umask(old)
    assert _io._umask() == old


def test_concurrent_writers_use_unique_temporary_names(tmp_path, monkeypatch):
    target = tmp_path / "shared.json"
    names: list[str] = []
    real_mkstemp = _io.tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        names.append(name)
        return fd, name

    monkeypatch.setattr(_io.tempfile, "mkstemp", recording_mkstemp)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            with _io.atomic_write(target) as handle:
                barrier.wait(timeout=10)  # all eight temporaries are open at once
                handle.write(json.dumps({"writer": i, "pad": "x" * 10_000}))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(names)) == 8
    assert json.loads(target.read_text())["writer"] in range(8)  # one whole record, not a mix
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


def test_binary_mode_and_bad_mode(tmp_path):
    with _io.atomic_write(tmp_path / "x.bin", "wb") as handle:
        handle.write(b"\x00\xff")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\xff"
    with pytest.raises(ValueError, match="mode"):
        with _io.atomic_write(tmp_path / "y", "a"):
            pass


# -- strict JSON ------------------------------------------------------------------------------
def test_non_finite_numbers_become_null():
    text = _io.dumps_json({"nan": float("nan"), "inf": math.inf, "ninf": -math.inf,
                           "np": np.float32("nan"), "t": torch.tensor([1.0, float("nan")]),
                           "ok": 1.5})
    assert strict_loads(text) == {"nan": None, "inf": None, "ninf": None, "np": None,
                                  "t": [1.0, None], "ok": 1.5}


def test_everything_we_produce_is_accepted():
    value = {"int": np.int64(3), "bool": True, "none": None, "tuple": (1, 2.5),
             "path": Path("a/b"), "tensor": torch.tensor(2), "scalar": np.float64(0.25),
             "nested": [{"x": torch.arange(3)}], "bf16": torch.tensor([0.5], dtype=torch.bfloat16),
             7: "int key"}
    assert strict_loads(_io.dumps_json(value)) == {
        "int": 3, "bool": True, "none": None, "tuple": [1, 2.5], "path": "a/b", "tensor": 2,
        "scalar": 0.25, "nested": [{"x": [0, 1, 2]}], "bf16": [0.5], "7": "int key"}


def test_unknown_objects_are_a_type_error_not_a_string():
    with pytest.raises(TypeError, match="object"):
        _io.dumps_json({"x": object()})


def test_write_json_is_strict_and_ends_with_a_newline(tmp_path):
    _io.write_json(tmp_path / "r.json", {"x": float("inf")})
    text = (tmp_path / "r.json").read_text()
    assert text.endswith("\n") and strict_loads(text) == {"x": None}


# -- output paths -----------------------------------------------------------------------------
def test_output_path_cases(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    inp = tmp_path / "in.safetensors"
    inp.write_bytes(b"x")
    assert _io.check_output_path(tmp_path / "new.json") == tmp_path / "new.json"
    cases = {
        tmp_path / "dir": "is a directory",
        tmp_path / "missing" / "x.json": "does not exist",
        tmp_path / "file" / "x.json": "is not a directory",
    }
    for path, words in cases.items():
        with pytest.raises(AdllmError, match=words):
            _io.check_output_path(path, flag="--out")
    with pytest.raises(AdllmError, match="also an input"):
        _io.check_output_path(inp, inputs=[None, tmp_path / "other", inp])


def test_output_path_same_file_through_a_link_or_relative_path(tmp_path, monkeypatch):
    inp = tmp_path / "v.safetensors"
    inp.write_bytes(b"x")
    link = tmp_path / "link.safetensors"
    link.symlink_to(inp)
    with pytest.raises(AdllmError, match="also an input"):
        _io.check_output_path(link, inputs=[inp])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdllmError, match="also an input"):
        _io.check_output_path("v.safetensors", inputs=[inp])
    # A new file next to the input is fine, and a bare file name has "." as its directory.
    assert _io.check_output_path("out.json", inputs=[inp]) == Path("out.json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_output_path_in_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(AdllmError, match="not writable"):
            _io.check_output_path(ro / "x.json")
    finally:
        ro.chmod(0o700)


def test_jsonl_append_accepts_only_its_own_records(tmp_path):
    def own(r):
        return isinstance(r, dict) and r.get("kind") == "kernel"

    new = tmp_path / "new.jsonl"
    assert _io.check_jsonl_append(new, is_own=own) == new
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"kind": "kernel"}\n\n{"kind": "kernel"}\n')
    _io.check_jsonl_append(mine, is_own=own)
    (tmp_path / "empty.jsonl").write_text("")
    _io.check_jsonl_append(tmp_path / "empty.jsonl", is_own=own)
    for name, content, words in [("w.safetensors", b"\x08\x00\x00\x00{}\xff\xfe", "line 1 is not JSON"),
                                 ("notes.txt", b"hello\n", "line 1 is not JSON"),
                                 ("other.jsonl", b'{"kind": "kernel"}\n{"a": 1}\n', "line 2")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(AdllmError, match=words):
            _io.check_jsonl_append(path, is_own=own)
        assert path.read_bytes() == content


def test_append_jsonl_writes_one_strict_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        _io.append_jsonl(handle, {"x": float("nan")})
        _io.append_jsonl(handle, {"x": 1})
    assert [strict_loads(line) for line in path.read_text().splitlines()] == [{"x": None}, {"x": 1}]


def test_read_text_input_keeps_every_byte(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"caf\xc3\xa9 \xff\xfe end")
    text = _io.read_text_input(path)
    assert text.encode("utf-8", "surrogateescape") == b"caf\xc3\xa9 \xff\xfe end"
    with pytest.raises(AdllmError, match="does not exist"):
        _io.read_text_input(tmp_path / "missing.txt")
    with pytest.raises(AdllmError, match="is a directory"):
        _io.read_text_input(tmp_path)


# -- special files, links and failing writes (found by an audit: each lost data before) ---------
def test_output_path_refuses_a_fifo_instead_of_replacing_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(AdllmError, match="not a regular file") as err:
        _io.check_output_path(fifo, flag="--history")
    assert "--history" in str(err.value) and "\n" not in str(err.value)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_path_probes_the_directory_by_creating_a_file(tmp_path, monkeypatch):
    """os.access says yes to root on /proc or a read-only mount; the probe does not."""
    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(_io.tempfile, "mkstemp", refuse)
    with pytest.raises(AdllmError, match="cannot create a file in .*Read-only file system"):
        _io.check_output_path(tmp_path / "x.json")


def test_output_path_probe_leaves_nothing_behind(tmp_path):
    _io.check_output_path(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", ["atomic_write", "atomic_path"])
def test_writing_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path, writer):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    if writer == "atomic_write":
        _io.write_text(link, "new")
    else:
        with _io.atomic_path(link) as tmp:
            tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_an_os_error_while_writing_is_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(AdllmError, match=r"could not write .*No space left.*not changed") as err:
        with _io.atomic_write(target) as handle:
            handle.write("partial")
            raise OSError(28, "No space left on device")
    assert "\n" not in str(err.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_directory_gone_at_write_time_is_one_line(tmp_path):
    """The directory vanished between the check and the write."""
    with pytest.raises(AdllmError, match="could not write .*choose another path") as err:
        _io.write_text(tmp_path / "gone" / "x.json", "data")
    assert "\n" not in str(err.value) and "free" not in str(err.value)


def test_a_cut_last_line_is_accepted_and_dropped_before_appending(tmp_path):
    """Found by an audit: a killed bench run's partial last line made the file "foreign"."""
    def own(r):
        return isinstance(r, dict) and r.get("kind") == "kernel"

    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"kind": "kernel", "a": 1}\n{"kind": "ker')
    _io.check_jsonl_append(path, is_own=own)
    with _io.open_jsonl_append(path) as handle:
        _io.append_jsonl(handle, {"kind": "kernel", "a": 2})
    assert [json.loads(line)["a"] for line in path.read_text().splitlines()] == [1, 2]
    for content in (b"not json", b"\nmy notes"):  # no record of ours before: not a residue
        only = tmp_path / "one.jsonl"
        only.write_bytes(content)
        with pytest.raises(AdllmError, match="is not JSON"):
            _io.check_jsonl_append(only, is_own=own)


def test_a_whole_last_record_without_newline_is_kept(tmp_path):
    """A file saved without a final newline: its last record stays (review finding)."""
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"kind": "kernel", "a": 1}\n{"kind": "kernel", "a": 2}')
    _io.check_jsonl_append(path, is_own=lambda r: r.get("kind") == "kernel")
    with _io.open_jsonl_append(path) as handle:
        _io.append_jsonl(handle, {"kind": "kernel", "a": 3})
    assert [json.loads(line)["a"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_a_write_error_names_the_path_given_and_a_links_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdllmError, match=r"could not write gone/x\.json \(No such"):
        _io.write_text("gone/x.json", "data")  # relative, no link: named as given
    (tmp_path / "link.json").symlink_to(tmp_path / "gone" / "x.json")
    with pytest.raises(AdllmError, match=r"could not write link\.json \(-> .*gone/x\.json\)"):
        _io.write_text("link.json", "data")


def test_read_text_input_refuses_binary_files(tmp_path):
    """Found by an audit: a weights file passed as calibration text or a haystack was read as
    text, its bytes replaced by U+FFFD."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00{}" + bytes(range(256)))
    with pytest.raises(AdllmError, match=r"looks binary \(a NUL byte at offset 1\)") as err:
        _io.read_text_input(path, flag="--data", errors="replace")
    assert "--data" in str(err.value) and "\n" not in str(err.value)
    # kept byte for byte (the byte-level model scores any file: tests/cli/test_eval_cli.py)
    assert _io.read_text_input(path).encode("utf-8", "surrogateescape") == path.read_bytes()
    text = tmp_path / "t.txt"
    text.write_bytes(b"ok \xff")
    assert _io.read_text_input(text, errors="replace") == "ok \ufffd"
