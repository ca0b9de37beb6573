#!/usr/bin/env bash
# Issue #14 item 4 on task accuracy: the bundled retrieval model at 2,048 bytes, 20 items
# (passkey and single needle, 10 each, test seed 0), dense and uniform sparse at select 0.3
# (key blocks of 32), under no cache / prefix / dual x threshold none / 0.9 / 0.7. One
# `adllm eval task` per (cache, threshold): its JSON summary and its per-item --out records.
#
#   bash scripts/task_cache_fidelity.sh DIR [extra eval-task options, e.g. --device cuda]
#
# CPU, float32 by default: about 12 minutes on 2 cores for one block of 32, nine of them the
# no-cache, no-threshold cell (benchmarks/results/task_cache_fidelity_2048/); the table:
# docs/fidelity.md.
set -euo pipefail
out=${1:?usage: task_cache_fidelity.sh DIR [eval task options]}
shift
mkdir -p "$out"
python=${PYTHON:-python3}
for cache in none prefix dual; do
  for tau in none 0.9 0.7; do
    name="cache-${cache}_threshold-${tau}"
    [[ -s "$out/$name.json" ]] && continue  # resumable: finished cells are kept
    args=(eval task retrieval --model retrieval --length 2048 --task-option kinds=passkey,niah_single
          --task-option n=10 --modes dense,uniform --select 0.3 --block-size 32 --device cpu
          --dtype float32 --quiet --json --out "$out/$name.jsonl")
    [[ $cache != none ]] && args+=(--cache "$cache")
    [[ $tau != none ]] && args+=(--threshold "$tau")
    start=$SECONDS
    "$python" -m adaptive_dllm.cli "${args[@]}" "$@" > "$out/$name.json.tmp"
    mv "$out/$name.json.tmp" "$out/$name.json"
    echo "$name: $((SECONDS - start)) s" >&2
  done
done
