"""The cells of the retrieval fidelity study (scripts/retrieval_study.py): calibration, accuracy,
needle mass and pruning, each a resumable JSONL of one record per finished cell.

Shape legend: Ly layers, H query heads, Hkv key/value heads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

import torch
from retrieval_study_heads import compare, group_sums, needle_mass

from adaptive_dllm._io import append_jsonl, atomic_write, dumps_json
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.runner import RunSettings, evaluate_task
from adaptive_dllm.evaluation.tasks.retrieval import make_task
from adaptive_dllm.importance.artifact import HeadImportance
from adaptive_dllm.importance.pruning import GatedModel, prune_gates
from adaptive_dllm.sparsity.config import SparseConfig

#: The records file of each step (per-item outputs stay in the cells/ results files).
FILES = {"calibrate": "calibration.jsonl", "accuracy": "accuracy.jsonl", "heads": "heads.jsonl",
         "prune": "prune.jsonl"}


class Records:
    """A JSONL of study records keyed by ``cell``: the finished cells, and appending new ones.

    A partial last line (a killed run) is dropped, so the cell it held is simply run again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        good = b""
        if path.exists():
            for raw in path.read_bytes().splitlines(keepends=True):
                try:
                    record = json.loads(raw)
                except ValueError:
                    break  # a line cut short: it and anything after it are dropped
                if not raw.endswith(b"\n") or not isinstance(record, dict) or "cell" not in record:
                    break
                self.done[record["cell"]] = record
                good += raw
            if len(good) < path.stat().st_size:
                with open(path, "r+b") as handle:
                    handle.truncate(len(good))

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        with open(self.path, "a", encoding="utf-8") as handle:
            append_jsonl(handle, record)
        self.done[record["cell"]] = record
        return record


def adllm_command(argv: list[str]) -> str:
    return shlex.join(["adllm", *argv])


class Study:
    """Runs the steps of the study with one loaded model (see the script's docstring)."""

    def __init__(self, args: argparse.Namespace, provenance: dict[str, Any]) -> None:
        from adaptive_dllm.models.checkpoints import load

        self.args, self.prov, self.out = args, provenance, args.out
        self.records = {step: Records(self.out / name) for step, name in FILES.items()}
        self.model, self.tok = load(args.model, device=args.device, dtype=args.dtype)
        if self.tok is None:
            raise AdllmError(f"model {args.model!r} has no tokenizer; the retrieval task needs one")
        self.block_size = args.block_size or SparseConfig().block_size
        self.prefix = f"L{args.length}"

    # ---- shared pieces -------------------------------------------------------------------
    def task(self, kind: str, n: int, seed: int) -> Any:
        return make_task(tokenizer=self.tok, length=self.args.length, kinds=[kind], n=n, seed=seed)

    def importance_path(self, estimator: str) -> Path:
        return self.out / "importance" / f"{self.prefix}_{estimator}.safetensors"

    def importance(self, estimator: str) -> HeadImportance:
        path = self.importance_path(estimator)
        if f"{self.prefix}/calib/{estimator}" not in self.records["calibrate"].done or not path.exists():
            raise AdllmError(f"no {estimator} importance at {path}; run the calibrate step first")
        return HeadImportance.load(path)

    def sparse_options(self) -> dict[str, Any]:
        given = {"block_size": self.args.block_size, "skip": self.args.skip}
        return {k: v for k, v in given.items() if v is not None}

    def sampler(self) -> dict[str, Any]:
        """Sampler options over the task's defaults (gen_length 32, steps 32, block 32)."""
        a = self.args
        given = {"gen_length": a.gen_length, "steps": a.gen_steps,
                 "block_length": a.gen_length if a.gen_length is not None else None}
        return {k: v for k, v in given.items() if v is not None}

    def record(self, step: str, cell: str, values: dict[str, Any]) -> dict[str, Any]:
        return self.records[step].add({"step": step, "cell": cell, "length": self.args.length,
                                       **values, **self.prov})

    # ---- 1. calibration ------------------------------------------------------------------
    def calibration_items(self) -> Path:
        """Prompt/completion JSONL of the calibration items (rewritten atomically each run)."""
        a = self.args
        rows = [{"id": it.id, "prompt": it.prompt, "completion": f" {it.target}.\n",
                 "target": it.target} for kind in a.kinds
                for it in self.task(kind, a.calib_items, a.calib_seed).items()]
        path = self.out / f"calibration_items_{self.prefix}.jsonl"
        with atomic_write(path) as handle:
            handle.write("".join(dumps_json(r) + "\n" for r in rows))
        return path

    def calibrate(self) -> None:
        from adaptive_dllm.cli import main as adllm

        a = self.args
        data = self.calibration_items()
        (self.out / "importance").mkdir(exist_ok=True)
        for est in a.estimators:
            cell = f"{self.prefix}/calib/{est}"
            if cell in self.records["calibrate"].done and self.importance_path(est).exists():
                continue
            argv = ["importance", "estimate", "--method", est, "--model", str(a.model),
                    "--data", str(data), "--data-kind", "jsonl", "--prompt-key", "prompt",
                    "--completion-key", "completion",
                    "--out", str(self.importance_path(est)), "--quiet"]
            argv += ["--device", str(a.device)] if a.device else []
            argv += ["--dtype", str(a.dtype)] if a.dtype else []
            if est != "headig":  # attention statistics score blocks; HeadIG has no block size
                argv += ["--block-size", str(self.block_size)]
            else:
                argv += ["--n", str(a.headig_n), "--steps", str(a.headig_steps), "--path-samples",
                         str(a.headig_path_samples), "--mask-samples", str(a.headig_mask_samples),
                         "--mask-ratios", a.headig_mask_ratios, "--no-resume"]
            started, cpu = time.perf_counter(), time.process_time()
            if adllm(argv) != 0:
                raise AdllmError(f"calibration of {est} failed: {adllm_command(argv)}")
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            imp = HeadImportance.load(self.importance_path(est))
            self.record("calibrate", cell, {
                "estimator": est, "seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
                "cli": adllm_command(argv),
                "calib_seed": a.calib_seed, "calib_items_per_kind": a.calib_items,
                "kinds": list(a.kinds), "path": str(self.importance_path(est).relative_to(self.out)),
                "settings": imp.metadata.get("settings"), "scores": imp.scores.tolist()})

    # ---- 2. accuracy ---------------------------------------------------------------------
    def rules(self) -> list[tuple[str, str | None, str]]:
        """(rule name, estimator or None, budget scope) of the sparse cells."""
        rules: list[tuple[str, str | None, str]] = [("uniform", None, "global")]
        rules += [(f"{est}-{scope}", est, scope) for est in self.args.estimators
                  for scope in self.args.scopes]
        return rules

    def accuracy(self) -> None:
        """Dense for every kind, then select by select (in the order given) every rule and kind:
        a run cut short has whole comparisons at the first selects."""
        a = self.args
        for kind in a.kinds:
            self.accuracy_cell(kind, "dense", None, "global", 1.0)
        for select in a.selects:
            for rule, est, scope in self.rules():
                for kind in a.kinds:
                    self.accuracy_cell(kind, rule, est, scope, select)

    def accuracy_cell(self, kind: str, rule: str, est: str | None, scope: str,
                      select: float) -> dict[str, Any]:
        a = self.args
        cell = f"{self.prefix}/accuracy/{kind}/n{a.items}/{rule}/{select:g}"
        if cell in self.records["accuracy"].done:
            return self.records["accuracy"].done[cell]
        mode = "dense" if rule == "dense" else "uniform" if est is None else "adaptive"
        sparse = {} if mode == "dense" else {**self.sparse_options(), "budget": scope}
        imp = self.importance(est) if est is not None else None
        settings = RunSettings(modes=(mode,), selects=(select,), sparse=sparse, seed=a.test_seed,
                               sampler=self.sampler(), batch_size=a.batch_size)
        result, cli, path = self.evaluate(self.model, kind, a.items, settings, imp, cell)
        if mode != "dense":
            cli += f" --select {select:g}" + "".join(
                f" --{k.replace('_', '-')} {v}" for k, v in self.sparse_options().items())
            cli += f" --importance {self.importance_path(est)}" if est else ""
            cli += f"  # budget scope {scope} (SparseConfig.budget; no eval-task flag)"
        return self.record("accuracy", cell, {
            "kind": kind, "items": a.items, "rule": rule, "mode": mode, "estimator": est,
            "scope": None if mode == "dense" else scope, "select": select, **result,
            "results_file": path, "cli": cli})

    def evaluate(self, model: Any, kind: str, n: int, settings: RunSettings,
                 imp: HeadImportance | None, cell: str) -> tuple[dict[str, Any], str, str]:
        """One ``evaluate_task`` run with its own per-item results file (resumed when present)."""
        a = self.args
        path = self.out / "cells" / (cell.replace("/", "_") + ".jsonl")
        path.parent.mkdir(exist_ok=True)
        started, cpu = time.perf_counter(), time.process_time()
        rep = evaluate_task(model, self.tok, self.task(kind, n, a.test_seed), settings,
                            importance=imp, out=path)
        r = rep.results[0]
        per_item = [float(rec.get("seconds") or 0.0) for rec in rep.records]
        result = {"n": r.n, "accuracy": r.accuracy, "ci95": list(r.ci95),
                  "keep": r.realized_keep_ratio, "wall_s": round(time.perf_counter() - started, 2),
                  # CPU seconds of this process (all threads) for the items run now: the cost
                  # measure that does not depend on what else the machine runs
                  "cpu_s": round(time.process_time() - cpu, 2),
                  "generation_s_per_item": round(sum(per_item) / max(1, len(per_item)), 3),
                  "backend": (rep.settings.get("sparse") or {}).get("backend")}
        cli = (f"adllm eval task retrieval --model {a.model} --length {a.length} --task-option "
               f"kinds={kind} --task-option n={n} --seed {a.test_seed} --modes {settings.modes[0]}"
               + "".join(f" --{k.replace('_', '-')} {v}" for k, v in settings.sampler.items()))
        return result, cli, str(path.relative_to(self.out))

    # ---- 3. heads ------------------------------------------------------------------------
    def heads(self) -> None:
        a = self.args
        gen = a.gen_length or self.task(a.kinds[0], 1, a.test_seed).generation_defaults()["gen_length"]
        masses = []
        for kind in a.kinds:
            cell = f"{self.prefix}/heads/mass/{kind}/n{a.head_items}"
            if cell not in self.records["heads"].done:
                self.mass_cell(cell, kind, gen)
            masses.append(torch.tensor(self.records["heads"].done[cell]["block_mass"]))
        mean = torch.stack(masses).mean(0)  # (Ly, H) over the kinds
        for est in a.estimators:
            cell = f"{self.prefix}/heads/rank/{est}/n{a.head_items}"
            if cell in self.records["heads"].done:
                continue
            self.rank_cell(cell, est, mean, dict(zip(a.kinds, masses, strict=True)))

    def mass_cell(self, cell: str, kind: str, gen_length: int) -> None:
        a = self.args
        # n = head_items (not the first items of the accuracy cells): answer depths spread
        # over [0, 1] as in the accuracy cells, only fewer of them.
        items = self.task(kind, a.head_items, a.test_seed).items()
        started = time.perf_counter()
        rows = [needle_mass(self.model, self.tok, it.prompt, it.target, it.meta["needle_span"],
                            gen_length=gen_length, block_size=self.block_size) for it in items]
        mean = {name: torch.stack([r[name] for r in rows]).mean(0) for name in ("block", "span", "prompt")}
        self.record("heads", cell, {
            "record": "needle_mass", "kind": kind, "items": [it.id for it in items],
            "block_size": self.block_size, "gen_length": gen_length,
            "block_mass": mean["block"].tolist(), "span_mass": mean["span"].tolist(),
            "prompt_mass": mean["prompt"].tolist(),
            "needle_blocks": [r["needle_blocks"] for r in rows],
            "needle_tokens": [r["needle_tokens"] for r in rows],
            "seconds": round(time.perf_counter() - started, 2)})

    def rank_cell(self, cell: str, est: str, mass: torch.Tensor,
                  per_kind: dict[str, torch.Tensor]) -> None:
        cfg = self.model.config
        imp = self.importance(est)
        scores = imp.scores.double()
        weights = SparseConfig(importance=imp).weights(cfg)  # (Ly, Hkv), mean 1
        self.record("heads", cell, {
            "record": "head_ranking", "estimator": est, **compare(scores, mass, k=self.args.top_k,
                                                               n_kv_heads=cfg.n_kv_heads),
            "spearman_per_kind": {k: compare(scores, m, k=self.args.top_k,
                                             n_kv_heads=cfg.n_kv_heads)["spearman"]
                                  for k, m in per_kind.items()},
            "budget_weights_kv": weights.tolist(),
            "needle_mass_kv": group_sums(mass, cfg.n_kv_heads).tolist()})

    # ---- 4. pruning ----------------------------------------------------------------------
    def prunings(self) -> list[tuple[str, str, int | None, torch.Tensor | None]]:
        """(estimator or "random", which, seed, gates (Ly, H)) of every pruning, after the
        unpruned baseline on the same items (gates None)."""
        a = self.args
        out: list[tuple[str, str, int | None, torch.Tensor | None]] = [("none", "none", None, None)]
        for est in a.estimators:
            imp = self.importance(est)
            out += [(est, which, None, prune_gates(imp, which, fraction=a.prune_fraction))
                    for which in ("most", "least")]
        scores = torch.zeros(self.model.config.n_layers, self.model.config.n_heads)
        out += [("random", "random", seed, prune_gates(scores, "random", fraction=a.prune_fraction,
                                                       seed=seed)) for seed in range(a.prune_seeds)]
        return out

    def prune(self) -> None:
        a = self.args
        for est, which, seed, gates in self.prunings():
            for kind in a.kinds:
                name = which if seed is None else f"{which}{seed}"
                cell = f"{self.prefix}/prune/{kind}/n{a.prune_items}/{est}/{name}/{a.prune_fraction:g}"
                if cell in self.records["prune"].done:
                    continue
                model = self.model if gates is None else GatedModel(self.model, gates)
                result, _, path = self.evaluate(model, kind, a.prune_items,
                                                RunSettings(modes=("dense",), seed=a.test_seed,
                                                            sampler=self.sampler(),
                                                            batch_size=a.batch_size), None,
                                                cell)
                self.record("prune", cell, {
                    "kind": kind, "items": a.prune_items, "estimator": est, "which": which,
                    "seed": seed, "fraction": a.prune_fraction,
                    "n_pruned": 0 if gates is None else int((gates == 0).sum()),
                    "pruned": [] if gates is None else (gates == 0).nonzero().tolist(), **result,
                    "results_file": path})
