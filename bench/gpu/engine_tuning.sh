#!/usr/bin/env bash
# Triton engine (issue 5): the whole-ensemble benchmark with the default engine and with this
# session's three steps off (2-voxel rows, fused shortcuts, epilogue statistics), the engine's and
# models' GPU tests, then per-layer times (bench/gpu/engine_layers.py: every way to run each conv,
# each CBAM pass, whole-engine variants). Needs nothing carried; ~6 min. Run it as
#   bash bench/gpu/engine_tuning.sh > "$OUT/engine_tuning.log" 2>&1
set -u
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
timeout 150 python3 bench/ensemble.py --device cuda --batches 1 32 256 1024 --out "$OUT/ensemble.json" 2>&1
timeout 100 python3 bench/ensemble.py --device cuda --no-xrun --no-fuse-shortcut \
  --batches 256 1024 --out "$OUT/ensemble_steps_off.json" 2>&1 | tail -4
timeout 240 python3 -m pytest -q -p no:cacheprovider --tb=short tests/ensemble tests/models 2>&1 | tail -15
timeout 300 python3 bench/gpu/engine_layers.py --batch 1024 --out "$OUT/layers.json" 2>&1
