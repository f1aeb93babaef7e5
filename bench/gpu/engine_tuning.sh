#!/usr/bin/env bash
# Triton engine (issue 5): per-layer times against cuDNN with a launch-parameter sweep, then the
# whole-ensemble benchmark with the Triton backend. Needs nothing carried. Writes under $OUT.
set -u
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/card.txt"
timeout 240 python3 bench/gpu/engine_layers.py --batch 1024 --out "$OUT/layers.json" 2>&1 | tee "$OUT/layers.log"
timeout 120 python3 bench/ensemble.py --device cuda --backend triton --batches 1 32 256 1024 \
  --out "$OUT/ensemble_triton.json" 2>&1 | tee "$OUT/ensemble_triton.log"
