#!/usr/bin/env bash
# Issue 14 benchmarks (benchmarks/README.md, "K/V cache and parallel decoding"): two device calls
# of at most 10 minutes each, JSONL records under OUT.
#
#   bash benchmarks/cache_h200.sh call1 "$OUT"        # GPU: cached-step kernel; e2e at 4k and 16k
#   bash benchmarks/cache_h200.sh call2 "$OUT"        # GPU: e2e at 64k
#   bash benchmarks/cache_h200.sh all "$OUT"          # GPU: both, targets first (~9 minutes)
#   bash benchmarks/cache_h200.sh graphs "$OUT"       # GPU: the e2e runs that the cached steps'
#                                                     # CUDA graphs change, graphs on and off
#   bash benchmarks/cache_h200.sh smoke DIR           # CPU: the same commands on the tiny geometry
#
# Random bf16 weights at the LLaDA-8B / Dream-7B geometry, 4 layers, 128 generated tokens,
# semi-autoregressive blocks of 32, select 0.3, skip 0.2, sparse key blocks of 128.
set -euo pipefail
what=${1:?call1, call2, all, graphs or smoke}
out=${2:?output directory}
[[ $what =~ ^(call1|call2|all|graphs|smoke)$ ]] || {
  echo "unknown: $what (call1, call2, all, graphs or smoke)" >&2; exit 2; }
mkdir -p "$out"
adllm=(python -m adaptive_dllm.cli bench)
common=(--family llada dream --n-layers 4 --gen-length 128 --block-length 32 --select 0.3
        --skip 0.2 --modes uniform --quiet)
if [[ $what == smoke ]]; then
  # Tiny geometry on the CPU: checks the harness end to end, says nothing about speed.
  common+=(--tiny --device cpu --block-size 16 --sparse-backend reference auto)
  decode_lengths=(256 1024); short=(64 256); long=(1024); repeats=2
else
  common+=(--sparse-backend auto triton)
  decode_lengths=(4224 16512 65664); short=(4096 16384); long=(65536); repeats=20
fi
decode() {
  # Cached-step attention: W queries (32 = dual's block window, 128 = prefix's widest) over
  # the cache, keep 0.3, Triton kernel vs the fastest dense SDPA, GB/s vs the copy rate.
  for window in 32 128; do
    "${adllm[@]}" --what decode "${common[@]}" --lengths "${decode_lengths[@]}" \
      --window "$window" --repeats "$repeats" --out "$out/cache_decode.jsonl"
  done
}
short() {  # $1: tokens per forward
  # End to end at 4k and 16k: no cache (dense baseline), prefix and dual, dense and uniform
  # sparse (auto and triton); one token per forward, or exactly four per forward.
  # Three timed generations each (the median is kept): single runs of 0.1-1 s varied by ~20%.
  "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${short[@]}" \
    --cache none prefix dual --tokens-per-step "$1" --e2e-repeats 3 --deadline 240 \
    --out "$out/cache_e2e.jsonl"
}
long() {  # $1: tokens per forward
  # 64k: at one token per forward, today's dense run without a cache vs prefix cache dense and
  # sparse; at four, prefix and dual (the baseline is the first run's).
  if [[ $1 == 1 ]]; then
    "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${long[@]}" \
      --cache none prefix --tokens-per-step 1 --deadline 420 --out "$out/cache_e2e_64k.jsonl"
  else
    "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${long[@]}" \
      --cache prefix dual --tokens-per-step "$1" --deadline 120 --out "$out/cache_e2e_64k.jsonl"
  fi
}
graphs() {
  # CUDA graphs replay the cached steps (generation/step_graph.py): the runs without a cache and
  # the cached-step kernel are untouched, so only cached runs are timed, with graphs and without
  # (same call, same card); 4k/16k with the no-cache baseline, 64k prefix only (its no-cache
  # baseline is 80 s per family and unchanged).
  "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${short[@]}" --cache none prefix dual \
    --tokens-per-step 1 --e2e-repeats 3 --deadline 200 --out "$out/cache_e2e.jsonl"
  "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${long[@]}" --cache prefix \
    --tokens-per-step 1 --deadline 90 --out "$out/cache_e2e_64k.jsonl"
  "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${short[@]}" --cache prefix dual \
    --tokens-per-step 1 --e2e-repeats 3 --deadline 120 --no-cuda-graphs --out "$out/cache_e2e.jsonl"
  "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${long[@]}" --cache prefix \
    --tokens-per-step 1 --deadline 90 --no-cuda-graphs --out "$out/cache_e2e_64k.jsonl"
}
case $what in
  call1) decode; short 1; short 4 ;;
  call2) long 1; long 4 ;;
  # One device call, the targets first: the kernel, 64k, 4k/16k, then four per forward.
  all) decode; long 1; short 1; short 4; long 4 ;;
  graphs) graphs ;;
  smoke) decode; short 1; short 4; long 1; long 4; graphs ;;
esac
