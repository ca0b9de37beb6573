#!/usr/bin/env bash
# Issue #14, the `--fast` preset: does a cache + threshold setting lose more than 1 point of task
# accuracy against dense attention without a cache? The bundled retrieval model, all four kinds
# (passkey, single and multi-key needle, variable tracking), N items each from test seed 0, at
# LENGTH tokens, dense attention, the task's sampler (32 answer bytes, 32 steps, one block). One
# `adllm eval task` per (cache, threshold) cell: its JSON summary and its per-item --out records,
# which scripts/fast_preset_report.py pairs item by item against the reference cell.
#
#   bash scripts/fast_preset_study.sh DIR [extra eval-task options, e.g. --device cuda]
#   python scripts/fast_preset_report.py DIR
#
# Env: LENGTH (default 1024), N (items per kind, default 100), SEED (the test seed of the items,
# default 0), CELLS (cache:threshold pairs, default all six below), PYTHON. Resumable: finished
# cells are kept, and an unfinished cell resumes from its --out file. The reference cell (no
# cache, no threshold: 32 full forwards per item) runs last and costs most: about 4.6 s per item
# at 1,024 tokens on 2 CPU cores (float32); a threshold cell 0.2-2 s.
set -euo pipefail
out=${1:?usage: fast_preset_study.sh DIR [eval task options]}
shift
mkdir -p "$out"
python=${PYTHON:-python3}
length=${LENGTH:-1024}
n=${N:-100}
seed=${SEED:-0}
# cache:threshold; "none:none" is the reference and runs last.
for cell in ${CELLS:-prefix:0.9 none:0.9 prefix:0.7 dual:0.9 prefix:none none:none}; do
  cache=${cell%%:*} tau=${cell##*:}
  name="cache-${cache}_threshold-${tau}"
  [[ -s "$out/$name.json" ]] && continue
  args=(eval task retrieval --model retrieval --length "$length" --task-option "n=$n"
        --task-option kinds=passkey,niah_single,niah_multikey,vt --modes dense --device cpu
        --dtype float32 --seed "$seed" --json --out "$out/$name.jsonl")
  [[ $cache != none ]] && args+=(--cache "$cache")
  [[ $tau != none ]] && args+=(--threshold "$tau")
  start=$SECONDS
  "$python" -m adaptive_dllm.cli "${args[@]}" "$@" > "$out/$name.json.tmp"
  mv "$out/$name.json.tmp" "$out/$name.json"
  printf '{"cell": "%s", "seconds": %d, "command": "adllm %s %s"}\n' "$name" \
    "$((SECONDS - start))" "${args[*]}" "$*" >> "$out/runs.jsonl"
  echo "$name: $((SECONDS - start)) s" >&2
done
