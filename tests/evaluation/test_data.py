"""The Shakespeare corpus split: whole works, nothing held out reaches training, shipped text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation import data

BUNDLED_HELDOUT = Path(data.__file__).parents[1] / "models" / "tiny" / "heldout.txt"
needs_corpus = pytest.mark.skipif(not data.DEV_CORPUS_DIR.is_dir(),
                                  reason=f"corpus not found at {data.DEV_CORPUS_DIR} (../shared absent)")


def fake_corpus(directory: Path, extra: dict[str, bytes] | None = None) -> Path:
    """Held-out works of letter 'h'-lines, training works of other letters, 40 KB each."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(data.HELDOUT_WORKS):
        lines = b"".join(b"held %d line %05d\n" % (i, j) for j in range(2500))
        (directory / f"{name}_gut.txt").write_bytes(lines)
    for name, letter in (("hamlet", b"a"), ("lear", b"b")):
        (directory / f"{name}_gut.txt").write_bytes((letter * 63 + b"\n") * 640)
    for name, text in (extra or {}).items():
        (directory / name).write_bytes(text)
    return directory


def test_split_is_by_whole_works(tmp_path):
    works = data.read_works(fake_corpus(tmp_path))
    train, held = data.split_works(works)
    assert set(held) == set(data.HELDOUT_WORKS)
    assert set(train) == {"hamlet", "lear"}
    assert not set(train) & set(held)


def test_folio_and_metadata_files_are_not_works(tmp_path):
    extra = {"tempest_gut_f.txt": b"folio", "metadata.txt": b"[x]", "COPYING.txt": b"MIT"}
    works = data.read_works(fake_corpus(tmp_path, extra))
    assert set(works) == set(data.HELDOUT_WORKS) | {"hamlet", "lear"}


def test_missing_heldout_work_refuses_to_split(tmp_path):
    corpus = fake_corpus(tmp_path)
    (corpus / "tempest_gut.txt").rename(corpus / "the_tempest_gut.txt")  # renamed: would leak
    with pytest.raises(AdllmError, match="tempest"):
        data.split_works(data.read_works(corpus))


def test_duplicated_heldout_text_is_caught(tmp_path):
    copy = (fake_corpus(tmp_path) / "richard_ii_gut.txt").read_bytes()
    (tmp_path / "king_richard_gut.txt").write_bytes(b"Preface.\n" + copy)
    with pytest.raises(AdllmError, match="richard_ii.*king_richard"):
        data.split_works(data.read_works(tmp_path))


def test_read_works_errors(tmp_path):
    with pytest.raises(AdllmError, match="does not exist"):
        data.read_works(tmp_path / "nope")
    with pytest.raises(AdllmError, match="no \\*_gut.txt"):
        data.read_works(tmp_path)


def test_sampler_draws_training_works_only_and_never_crosses_works(tmp_path):
    train, held = data.split_works(data.read_works(fake_corpus(tmp_path)))
    sampler = data.WindowSampler(train, 256, "cpu")
    x = sampler.sample(512, 256, torch.Generator().manual_seed(0))
    assert x.shape == (512, 256) and x.dtype == torch.long
    letters = {ord("a"), ord("b")}
    for row in x:
        present = set(row.tolist()) - {ord("\n")}
        assert len(present) == 1 and present <= letters  # one work per window, never held-out
    assert {int(r.max()) for r in x} == letters  # both works are drawn
    short = sampler.sample(4, 64, torch.Generator().manual_seed(0))
    assert short.shape == (4, 64)


def test_sampler_is_seeded(tmp_path):
    train, _ = data.split_works(data.read_works(fake_corpus(tmp_path)))
    sampler = data.WindowSampler(train, 64, "cpu")
    a = sampler.sample(8, 64, torch.Generator().manual_seed(3))
    b = sampler.sample(8, 64, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(AdllmError, match="window length"):
        sampler.sample(1, 65, torch.Generator())


def test_heldout_text_comes_from_heldout_works_only(tmp_path):
    train, held = data.split_works(data.read_works(fake_corpus(tmp_path)))
    text = data.heldout_text(held)
    assert len(text) == len(data.HELDOUT_WORKS) * data.HELDOUT_BYTES
    for i, name in enumerate(data.HELDOUT_WORKS):
        part = text[i * data.HELDOUT_BYTES : (i + 1) * data.HELDOUT_BYTES]
        assert part == held[name][data.HELDOUT_OFFSET : data.HELDOUT_OFFSET + data.HELDOUT_BYTES]


def test_split_passages():
    ids = list(range(10))
    assert data.split_passages(ids, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert data.split_passages(b"abc", 8).tolist() == [[97, 98, 99]]
    assert data.split_passages(torch.arange(8), 8).shape == (1, 8)
    with pytest.raises(AdllmError, match="empty"):
        data.split_passages(b"", 4)
    with pytest.raises(AdllmError, match="at least 1"):
        data.split_passages(ids, 0)


@needs_corpus
def test_real_corpus_split():
    works = data.read_works(data.DEV_CORPUS_DIR)
    train, held = data.split_works(works)
    assert len(works) == 42 and len(held) == 4 and len(train) == 38
    assert not set(train) & set(data.HELDOUT_WORKS)
    assert sum(map(len, held.values())) < 0.1 * sum(map(len, works.values()))


@needs_corpus
def test_bundled_heldout_text_is_the_heldout_slice():
    train, held = data.split_works(data.read_works(data.DEV_CORPUS_DIR))
    shipped = BUNDLED_HELDOUT.read_bytes()
    assert shipped == data.heldout_text(held)
    for start in range(0, len(shipped), 4096):  # no piece of it occurs in any training work
        probe = shipped[start : start + 200]
        assert not any(probe in text for text in train.values())


def test_bundled_heldout_text_shape():
    shipped = BUNDLED_HELDOUT.read_bytes()
    assert len(shipped) == 64 * data.PASSAGE_LENGTH
    assert data.split_passages(shipped, data.PASSAGE_LENGTH).shape == (64, 1024)
    shipped.decode("ascii")


def test_normalize_work_speaker_lines_become_upper_case_with_colon():
    raw = (b"ACT I.\n\nSCENE II.\nVerona. A street.\n\nRomeo.\nO, she doth teach the torches.\n\n"
           b"FIRST and SECOND  SERVANT.\nAy, sir.\n\nHam.\nWords, words.\n\n"
           b"It is my mistress.\nO, it is my love!\n\nGhost.\n\n[Exit.]\n")
    text = data.normalize_work(raw)
    assert b"\nROMEO:\nO, she doth" in text
    assert b"\nFIRST AND SECOND SERVANT:\nAy, sir." in text
    assert b"\nHAM:\nWords, words." in text
    # headings, sentences and a name with no speech after it are left alone
    assert text.startswith(b"ACT I.\n\nSCENE II.\nVerona. A street.")
    assert b"\nIt is my mistress.\n" in text and b"\nGhost.\n\n[Exit.]" in text


def test_normalize_work_caps_indents_and_keeps_other_text():
    raw = b"LEONTES.\n" + b" " * 19 + b"Stay your thanks a while,\n  Song line\r\nplain\n"
    text = data.normalize_work(b"\n" + raw)
    assert text == (b"\nLEONTES:\n" + b" " * data.MAX_INDENT + b"Stay your thanks a while,\n"
                    b"  Song line\nplain\n")
    assert data.normalize_work(b"no speakers here.\n") == b"no speakers here.\n"


def test_read_works_normalizes_by_default(tmp_path):
    (tmp_path / "hamlet_gut.txt").write_bytes(b"\nHam.\n" + b" " * 12 + b"Words.\n")
    assert data.read_works(tmp_path)["hamlet"] == b"\nHAM:\n    Words.\n"
    assert data.read_works(tmp_path, normalize=False)["hamlet"] == b"\nHam.\n" + b" " * 12 + b"Words.\n"
