#!/usr/bin/env bash
# Issue 5's record run: the whole-ensemble benchmark with the default engine, the engine's
# variants (each in its own process, CUDA graph + streams as served), then the GPU tests of the
# engine and the models. Needs nothing carried (~6 min). Run as
#   bash bench/gpu/engine_final.sh > "$OUT/engine_final.log" 2>&1
set -u
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
timeout 150 python3 bench/ensemble.py --device cuda --batches 1 32 256 1024 --out "$OUT/ensemble.json" 2>&1
timeout 300 python3 bench/gpu/engine_variants.py --batches 1024 256 --out "$OUT/variants.json" \
  --variants default "stem CBAM on padded output" "folded inputs with x border" "no 2-voxel rows" \
  "shortcuts unfused" "never folded" 2>&1 | cut -c1-400
timeout 240 python3 -m pytest -q -p no:cacheprovider --tb=short tests/ensemble tests/models 2>&1 | tail -25
