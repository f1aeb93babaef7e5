#!/usr/bin/env bash
# Triton engine (issue 5): the whole-ensemble benchmark (default engine, and with folding off),
# the GPU engine tests, then per-layer times (our kernel with a launch sweep vs x-folded cuDNN,
# every CBAM pass). Needs nothing carried. Writes JSON under $OUT; run it as
#   bash bench/gpu/engine_tuning.sh > "$OUT/engine_tuning.log" 2>&1
set -u
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/card.txt"
timeout 150 python3 bench/ensemble.py --device cuda --backend triton --batches 1 32 256 1024 \
  --out "$OUT/ensemble_triton.json" 2>&1
timeout 100 python3 bench/ensemble.py --device cuda --backend triton --fold-max-cin 0 --batches 256 1024 \
  --out "$OUT/ensemble_triton_nofold.json" 2>&1
timeout 60 python3 bench/ensemble.py --device cuda --backend triton --stream-max-batch 0 --batches 1024 \
  --out "$OUT/ensemble_triton_in_turn.json" 2>&1 | tail -3
timeout 150 python3 -m pytest -q -p no:cacheprovider --tb=short tests/ensemble/test_ensemble_triton.py 2>&1 | tail -40
timeout 300 python3 bench/gpu/engine_layers.py --batch 1024 --out "$OUT/layers.json" 2>&1
