#!/usr/bin/env bash
# One device call of the retrieval model's training (issue #13); the plan is docs/retrieval_model.md.
#
#   bash scripts/device_train_retrieval.sh base   # from the bundled retrieval model (2k context,
#                                                 # trained on CPU), 2k..8k, eval 4k/8k, 50/kind (~8 min)
#   bash scripts/device_train_retrieval.sh long   # resume, 8k..16k, eval 16k/8k/4k, 100/kind (~9 min)
#   bash scripts/device_train_retrieval.sh more   # resume, 1k..8k again (base missed)        (~8 min)
#   bash scripts/device_train_retrieval.sh eval   # the checkpoint only, 4k/8k/16k, 100/kind (<= 9 min)
#   bash scripts/device_train_retrieval.sh focus  # from base's checkpoint (runs/retrieval-in/final),
#                                                 # multi-key needles 3 rows in 5, 1k..8k (~8 min)
#
# Run from the repository root on the GPU machine, with the Shakespeare texts carried in
# runs/data/shakespeare (copy ../shared/data/shakespeare there first; runs/ is git-ignored).
# Resuming uses runs/retrieval/resume.pt when the machine is still the previous call's, else the
# parts of the previous call's $OUT/resume carried in as runs/retrieval-in/resume/.
# Everything that must come back goes to $OUT (7 files, all under 16 MiB):
#   final/config.json, final/model.safetensors   the bf16 checkpoint (about 8 MiB)
#   train_log.jsonl, eval.json                    the log (loss, periodic eval) and the final eval
#   resume/resume.pt.part-00..02                  fp32 weights + AdamW moments (bf16), 15 MiB parts
# Extra arguments go to scripts/train_retrieval.py (they override the ones below).
set -uo pipefail
stage=${1:?usage: device_train_retrieval.sh base|long|more|eval [train_retrieval.py options]}
shift
out=${OUT:-runs/retrieval-out}
run=runs/retrieval
data=${DATA:-runs/data/shakespeare}
export PYTHONPATH=src PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
mkdir -p "$run" "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
[ -d "$data" ] || { echo "no corpus at $data: carry runs/data (see docs/retrieval_model.md)"; exit 2; }

# A fresh machine: restore the previous call's $OUT, carried in as runs/retrieval-in/.
if [ "$stage" != base ] && [ ! -f "$run/final/model.safetensors" ] && [ -d runs/retrieval-in/final ]; then
    mkdir -p "$run/final" && cp runs/retrieval-in/final/* "$run/final/"
    [ -f runs/retrieval-in/train_log.jsonl ] && cp runs/retrieval-in/train_log.jsonl "$run/"
fi
if [ "$stage" = long ] || [ "$stage" = more ]; then
    if [ ! -f "$run/resume.pt" ]; then
        ls runs/retrieval-in/resume/resume.pt.part-* >/dev/null 2>&1 || {
            echo "stage $stage needs $run/resume.pt or runs/retrieval-in/resume/ (the previous \$OUT)"; exit 2; }
        cat runs/retrieval-in/resume/resume.pt.part-* > "$run/resume.pt"
    fi
fi

# Eager: compiling (--compile) would save the fp32 element-wise passes but costs about a minute per
# call and recompiles per shape; at 8k-16k attention dominates the step anyway.
# vt is left out of training (as on CPU): its 20-letter answers would dominate the answer loss.
common=(--data "$data" --out "$run" --final-n 100 --train-kinds passkey,niah_single,niah_multikey)
# The command's limit is 600 s: training minutes + final-eval minutes + start-up and copies < 600 s.
case $stage in
    base) timeout 575 "$python" scripts/train_retrieval.py "${common[@]}" --minutes 6 \
              --init-from src/adaptive_dllm/models/retrieval --lr 1e-3 --warmup 30 \
              --min-length 2048 --max-length 8192 --final-lengths 4096,8192 --final-n 50 \
              --final-max-minutes 2 "$@" ;;
    long) timeout 575 "$python" scripts/train_retrieval.py "${common[@]}" --resume --minutes 5 \
              --min-length 8192 --max-length 16384 --lr 1e-3 --warmup 30 \
              --final-lengths 16384,8192,4096 --final-max-minutes 3.8 "$@" ;;
    more) timeout 575 "$python" scripts/train_retrieval.py "${common[@]}" --resume --minutes 6 \
              --min-length 1024 --max-length 8192 --lr 1e-3 --warmup 30 \
              --final-lengths 4096,8192 --final-n 50 --final-max-minutes 2 "$@" ;;
    focus) [ -f runs/retrieval-in/final/model.safetensors ] || {
              echo "stage focus needs base's checkpoint in runs/retrieval-in/final (carry it)"; exit 2; }
          # base left multi-key needles at 0.12 (passkey, single needle >= 0.98): weight them 3:1:1.
          timeout 575 "$python" scripts/train_retrieval.py "${common[@]}" --minutes 6 \
              --init-from runs/retrieval-in/final --lr 1e-3 --warmup 30 --data-seed 2000000 \
              --train-kinds niah_multikey,niah_multikey,niah_multikey,passkey,niah_single \
              --min-length 1024 --max-length 8192 --final-lengths 4096,8192 --final-n 50 \
              --final-max-minutes 2 "$@" ;;
    eval) timeout 575 "$python" scripts/train_retrieval.py "${common[@]}" --eval-only \
              --final-lengths 4096,8192,16384 --final-max-minutes 8 "$@" ;;
    *) echo "unknown stage $stage: base, long, more or eval"; exit 2 ;;
esac
status=$?
echo "train_retrieval.py exited with $status"

# Copy back whatever exists, even after a timeout: final/ and resume.pt are refreshed at each eval.
mkdir -p "$out/final" "$out/resume"
cp "$run/final/config.json" "$run/final/model.safetensors" "$out/final/" 2>/dev/null
cp "$run/train_log.jsonl" "$run/eval.json" "$out/" 2>/dev/null
[ "$stage" = eval ] || split -b 15M -d "$run/resume.pt" "$out/resume/resume.pt.part-"
ls -l "$out" "$out/final" "$out/resume"
exit $status
