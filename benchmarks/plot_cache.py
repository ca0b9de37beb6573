"""Plot the cache protocol's records (issue 14) from a results folder:

    PYTHONPATH=src python benchmarks/plot_cache.py benchmarks/results/cache_h100_6594da7 OUT.png

reads every ``*.jsonl`` there (``adllm bench --what decode|e2e`` records) and writes the figure of
:func:`adaptive_dllm.bench.reports.plot_cache`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adaptive_dllm.bench.reports import plot_cache
from adaptive_dllm.cli.plots import save_plot


def main(folder: str, out: str) -> None:
    files = sorted(Path(folder).glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no .jsonl records in {folder}: give the folder of cache_h200.sh's output")
    records = [json.loads(line) for f in files for line in f.read_text().splitlines() if line]
    save_plot(lambda tmp: plot_cache(records, str(tmp)), out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
