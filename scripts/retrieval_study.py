"""The retrieval fidelity study of issue #13: task accuracy of sparse attention vs select, budget
rule and importance estimator; which heads the estimators rank high and whether they read the
needle; head pruning on the task.

Steps (``--steps``, default all, in this order), each appending one JSON record per finished
cell (with the command, commit, device, torch version and date) to a JSONL file under ``--out``;
a rerun skips every cell already recorded, and a cell cut short resumes item by item from its
per-item results file (``cells/``, the format of ``adllm eval task --out``):

1. ``calibrate`` (``calibration.jsonl``): retrieval items of ``--calib-seed`` (never the test
   seed: different prompts and answers), ``--calib-items`` per kind, written as prompt/completion
   JSONL (``calibration_items.jsonl``, completion `` {answer}.\\n`` as the model writes it), and
   ``adllm importance estimate --data-kind jsonl`` on them for every estimator
   (``importance/{estimator}.safetensors``). HeadIG runs with the small ``--headig-*`` settings
   (stated in the record) so that it stays cheap on a CPU.
2. ``accuracy`` (``accuracy.jsonl``): for each kind, dense, then every select with uniform
   budgets and with adaptive budgets of every estimator x budget scope (``global``: budgets move
   between layers; ``per_layer``: each layer keeps ``select``; SparseConfig ``budget``, which
   ``adllm eval task`` has no flag for, so the study calls the library's ``evaluate_task``).
   Uniform runs once (global): with equal weights both scopes give every unit ``select``.
   Every record carries the realised keep ratio.
3. ``heads`` (``heads.jsonl``): per kind, the attention mass of every query head on the needle
   (``retrieval_study_heads``) over ``--head-items`` test items; per estimator, its top heads,
   the Spearman correlation of its scores with the needle mass, and its budget weights per KV
   head next to the KV heads' needle mass.
4. ``prune`` (``prune.jsonl``): dense accuracy per kind with the most / least important
   ``--prune-fraction`` of the query heads of each estimator removed (head gates 0,
   ``importance.pruning``), and with random heads (``--prune-seeds`` seeds, shared by all).
5. ``report``: ``accuracy.png`` (accuracy vs select per rule, dense as a line) and
   ``fidelity_tables.md`` (every cell with its keep ratio; heads; pruning) for docs/fidelity.md.

Cost on a CPU (measured at 2048 tokens with the 8 x 8-head, d_model 256 model, one torch thread,
generation of 32 positions in 32 steps, skip 0.2): a dense item ~28 CPU-s (~0.8 s per step);
a sparse item ~128 CPU-s (each of its 25 sparse steps ~4.9 s: the ``reference`` backend, eager
fp32 attention over an element mask, ~6x the dense step); HeadIG ~20 CPU-s per example with
the default ``--headig-*`` settings; entropy / coverage and the needle mass ~1 CPU-s per item.
A cell costs ``items`` times its item cost; the records keep ``cpu_s`` and ``wall_s`` per cell.

Example (CPU, the length the lead runs; see docs/fidelity.md for the numbers):

    PYTHONPATH=src nice -n 10 python scripts/retrieval_study.py --model retrieval --device cpu \\
        --length 2048 --items 24 --out benchmarks/results/retrieval_study_2048
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the study's sibling helper modules

import retrieval_study_report as report  # noqa: E402
from retrieval_study_cells import Study  # noqa: E402

from adaptive_dllm.errors import AdllmError  # noqa: E402

STEPS = ("calibrate", "accuracy", "heads", "prune", "report")
ESTIMATORS = ("entropy", "coverage", "headig")
SCOPES = ("global", "per_layer")
KINDS = ("passkey", "niah_single", "niah_multikey")


def _list(text: str, allowed: tuple[str, ...] | None, flag: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad or len(set(items)) != len(items):
        raise AdllmError(f"{flag} {text!r}: give distinct values from {', '.join(allowed or ())}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory or bundled model name")
    p.add_argument("--out", required=True, type=Path, help="results directory (resumed)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="default fp32 on CPU, bf16 on GPU")
    p.add_argument("--steps", default=",".join(STEPS), help=f"subset of {','.join(STEPS)}")
    t = p.add_argument_group("items")
    t.add_argument("--length", type=int, default=2048, help="prompt length in tokens")
    t.add_argument("--items", type=int, default=24, help="test items per kind")
    t.add_argument("--kinds", default=",".join(KINDS), help="retrieval kinds")
    t.add_argument("--vt", action="store_true", help="add variable tracking to the kinds")
    t.add_argument("--test-seed", type=int, default=0, help="seed of the test items (default 0)")
    t.add_argument("--batch-size", type=int, default=1, help="items per generation batch of the "
                   "accuracy and pruning cells (prompts of a kind have one length: no padding)")
    s = p.add_argument_group("sparse cells")
    s.add_argument("--selects", default="0.3,0.1,0.05,0.2,0.5",
                   help="keep ratios, run in this order (a cut run has the first ones whole)")
    s.add_argument("--estimators", default=",".join(ESTIMATORS))
    s.add_argument("--scopes", default=",".join(SCOPES), help="budget scopes of adaptive cells")
    s.add_argument("--block-size", type=int, default=None, help="default: SparseConfig's")
    s.add_argument("--skip", type=float, default=None, help="default: SparseConfig's")
    s.add_argument("--gen-length", type=int, default=None,
                   help="generated positions (default: the task's 32; one block of this length)")
    s.add_argument("--gen-steps", type=int, default=None, help="denoising steps (default: the "
                   "task's 32, or gen-length x 32 / 32 with --gen-length)")
    c = p.add_argument_group("calibration")
    c.add_argument("--calib-seed", type=int, default=1, help="item seed of calibration (default 1)")
    c.add_argument("--calib-items", type=int, default=8, help="calibration items per kind")
    c.add_argument("--headig-n", type=int, default=6, help="HeadIG examples (default 6)")
    c.add_argument("--headig-steps", type=int, default=4, help="HeadIG integration steps K")
    c.add_argument("--headig-path-samples", type=int, default=1, help="HeadIG STP paths P")
    c.add_argument("--headig-mask-samples", type=int, default=1, help="HeadIG masks S per ratio")
    c.add_argument("--headig-mask-ratios", default="0.5,1.0", help="HeadIG completion mask ratios")
    h = p.add_argument_group("heads and pruning")
    h.add_argument("--head-items", type=int, default=8, help="test items per kind for needle mass")
    h.add_argument("--top-k", type=int, default=8, help="top heads listed per estimator")
    h.add_argument("--prune-fraction", type=float, default=0.25)
    h.add_argument("--prune-seeds", type=int, default=3, help="random prunings")
    h.add_argument("--prune-items", type=int, default=None, help="items per kind (default --items)")
    args = p.parse_args(argv)
    args.steps = _list(args.steps, STEPS, "--steps")
    args.kinds = _list(args.kinds, (*KINDS, "vt"), "--kinds") + (("vt",) if args.vt else ())
    args.estimators = _list(args.estimators, ESTIMATORS, "--estimators")
    args.scopes = _list(args.scopes, SCOPES, "--scopes")
    args.selects = tuple(float(x) for x in _list(args.selects, None, "--selects"))
    if args.calib_seed == args.test_seed:
        raise AdllmError(f"--calib-seed {args.calib_seed} equals --test-seed: calibration items "
                         "must differ from the test items; pick another seed")
    for name in ("length", "items", "calib_items", "headig_n", "head_items", "top_k", "prune_seeds",
                 "batch_size"):
        if getattr(args, name) < 1:
            raise AdllmError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if not 0 < args.prune_fraction < 1 or any(not 0 < x <= 1 for x in args.selects):
        raise AdllmError("--prune-fraction must be in (0, 1) and every --selects value in (0, 1]")
    args.prune_items = args.prune_items or args.items
    return args


def provenance(argv: list[str]) -> dict[str, Any]:
    """What every record carries: the study's command, commit, device, torch version, date."""
    here = Path(__file__).resolve().parent
    # ADLLM_GIT_COMMIT first, as the benchmarks do: a copy of the tree on another machine may
    # carry a stale .git whose describe names the wrong commit.
    commit = os.environ.get("ADLLM_GIT_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                                    capture_output=True, text=True, cwd=here,
                                    check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = None
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    return {"command": shlex.join(["python", "scripts/retrieval_study.py", *argv]), "commit": commit,
            "device": device, "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        args.out.mkdir(parents=True, exist_ok=True)
        study = Study(args, provenance(argv))
        for step in args.steps:
            started = time.perf_counter()
            if step == "report":
                written = report.write_report(args.out)
                print(f"report: {', '.join(str(p) for p in written)}", file=sys.stderr)
            else:
                getattr(study, step)()
                print(f"{step}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    except AdllmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

