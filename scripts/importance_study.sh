#!/usr/bin/env bash
# The study of docs/importance.md on the bundled model: HeadIG runs (two seeds, two halves of
# the held-out works), attention statistics, pruning tests, rank comparisons and HeadIG-adaptive
# fidelity. Every command's JSON output (stdout), its progress log (stderr) and the importance
# files go to DIR, with a `runs.jsonl` line per command (command, seconds, commit, date).
#
#   bash scripts/importance_study.sh DIR SHAKESPEARE_DIR
#
# Environment: DEVICE (default cpu), N (HeadIG passages, default 8), PATHS (STP path samples,
# default 2; the estimator's default is 4). On 2 CPU cores a HeadIG run with N=8, PATHS=2 takes
# about 8 minutes (about 58 s per passage); the whole study about 70 minutes.
# Resumable: a command whose output exists is skipped.
set -euo pipefail
out=${1:?usage: importance_study.sh DIR SHAKESPEARE_DIR}
text=${2:?usage: importance_study.sh DIR SHAKESPEARE_DIR}
device=${DEVICE:-cpu}
n=${N:-8}
paths=${PATHS:-2}
python=${PYTHON:-python3}
mkdir -p "$out"
commit=${ADLLM_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

A="$text/julius_caesar_gut.txt $text/much_ado_about_nothing_gut.txt"
B="$text/richard_ii_gut.txt $text/tempest_gut.txt"
calib=(--text-offset 32768 --text-limit 65536 --device "$device" --json)
headig=(--method headig --n "$n" --path-samples "$paths")

# run NAME ARGS...: `adllm ARGS` with stdout to NAME.json, stderr to NAME.log
run() {
  local name=$1; shift
  [[ -s "$out/$name.json" ]] && return 0
  local start=$SECONDS
  "$python" -m adaptive_dllm.cli "$@" > "$out/$name.json.tmp" 2> "$out/$name.log"
  mv "$out/$name.json.tmp" "$out/$name.json"
  "$python" - "$name" "$((SECONDS - start))" "$commit" "$@" >> "$out/runs.jsonl" <<'EOF'
import datetime, json, platform, sys
import torch
name, seconds, commit, *argv = sys.argv[1:]
print(json.dumps({"name": name, "command": "adllm " + " ".join(argv), "seconds": int(seconds),
                  "commit": commit, "date": datetime.date.today().isoformat(),
                  "torch": torch.__version__, "machine": platform.machine(),
                  "cpu_threads": torch.get_num_threads()}))
EOF
  echo "$name: $((SECONDS - start)) s" >&2
}

# shellcheck disable=SC2086  # the work lists are meant to split
{
run headig_s0 importance estimate "${headig[@]}" --data $A $B "${calib[@]}" --seed 0 --out "$out/headig_s0.safetensors"
run entropy importance estimate --method entropy --data $A $B --n 32 "${calib[@]}" --out "$out/entropy.safetensors"
run coverage importance estimate --method coverage --data $A $B --n 32 "${calib[@]}" --out "$out/coverage.safetensors"
for f in 0.0625 0.125 0.25; do
  run "prune_headig_s0_$f" prune --importance "$out/headig_s0.safetensors" --fraction "$f" --seeds 5 --device "$device" --json
done
run prune_headig_s0_0.25_per_layer prune --importance "$out/headig_s0.safetensors" --fraction 0.25 --scope per-layer --seeds 5 --device "$device" --json
run prune_entropy_0.25 prune --importance "$out/entropy.safetensors" --fraction 0.25 --which most,least --device "$device" --json
run fidelity_headig eval fidelity --select 0.1,0.2,0.3 --modes dense,adaptive --importance "$out/headig_s0.safetensors" --block-size 32 --skip 0.2 --mask-ratios 0.15,0.5,0.9 --passages 8 --prompts 4 --device "$device" --json
run headig_s1 importance estimate "${headig[@]}" --data $A $B "${calib[@]}" --seed 1 --out "$out/headig_s1.safetensors"
run headig_A importance estimate "${headig[@]}" --data $A "${calib[@]}" --seed 0 --out "$out/headig_A.safetensors"
run headig_B importance estimate "${headig[@]}" --data $B "${calib[@]}" --seed 0 --out "$out/headig_B.safetensors"
}
compare() { run "compare_$1_$2" importance compare "$out/$1.safetensors" "$out/$2.safetensors" --top-k 16 --json; }
compare headig_s0 headig_s1
compare headig_A headig_B
compare headig_s0 headig_A
compare headig_s0 headig_B
compare headig_s0 entropy
compare headig_s0 coverage
compare entropy coverage
