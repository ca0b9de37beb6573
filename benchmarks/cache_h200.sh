#!/usr/bin/env bash
# Issue 14 benchmarks (benchmarks/README.md, "K/V cache and parallel decoding"): two device calls
# of at most 10 minutes each, JSONL records under OUT.
#
#   bash benchmarks/cache_h200.sh call1 "$OUT"        # GPU: cached-step kernel; e2e at 4k and 16k
#   bash benchmarks/cache_h200.sh call2 "$OUT"        # GPU: e2e at 64k
#   bash benchmarks/cache_h200.sh smoke DIR           # CPU: the same commands on the tiny geometry
#
# Random bf16 weights at the LLaDA-8B / Dream-7B geometry, 4 layers, 128 generated tokens,
# semi-autoregressive blocks of 32, select 0.3, skip 0.2, sparse key blocks of 128.
set -euo pipefail
what=${1:?call1, call2 or smoke}
out=${2:?output directory}
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
case $what in
  call1|smoke)
    # Cached-step attention: W queries (32 = dual's block window, 128 = prefix's widest) over
    # the cache, keep 0.3, Triton kernel vs the fastest dense SDPA, GB/s vs the copy rate.
    for window in 32 128; do
      "${adllm[@]}" --what decode "${common[@]}" --lengths "${decode_lengths[@]}" \
        --window "$window" --repeats "$repeats" --out "$out/cache_decode.jsonl"
    done
    # End to end at 4k and 16k: no cache (dense baseline), prefix and dual, dense and uniform
    # sparse (auto and triton); one token per forward, then exactly four per forward.
    for k in 1 4; do
      "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${short[@]}" \
        --cache none prefix dual --tokens-per-step "$k" --deadline 240 \
        --out "$out/cache_e2e.jsonl"
    done
    ;;&
  call2|smoke)
    # 64k: today's dense run without a cache vs prefix cache dense and sparse (one token per
    # forward); then prefix and dual at four tokens per forward (baseline from the first run).
    "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${long[@]}" \
      --cache none prefix --tokens-per-step 1 --deadline 420 --out "$out/cache_e2e_64k.jsonl"
    "${adllm[@]}" --what e2e "${common[@]}" --e2e-lengths "${long[@]}" \
      --cache prefix dual --tokens-per-step 4 --deadline 120 --out "$out/cache_e2e_64k.jsonl"
    ;;
  call1) ;;
  *) echo "unknown: $what (call1, call2 or smoke)" >&2; exit 2 ;;
esac
