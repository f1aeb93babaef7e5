#!/usr/bin/env bash
# Ensemble engine (issue 5) and gRPC service (issue 7) on one GPU, in one device call.
# Needs .gpu_protobuf carried (protobuf >= 7.35 for the checked-in generated code). Writes under $OUT.
# LAYERS=1 adds the per-layer profile (bench/gpu/engine_layers.py, ~2 min).
set -u
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.gpu_protobuf:$PWD
LOG="$OUT/all.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
if [ "${LAYERS:-0}" = 1 ]; then
  timeout 180 python3 bench/gpu/engine_layers.py --batch 1024 --out "$OUT/layers.json" 2>&1 | tee -a "$LOG"
fi
timeout 110 python3 bench/ensemble.py --device cuda --backend triton --out "$OUT/ensemble_triton.json" 2>&1 | tee -a "$LOG"
timeout 100 python3 bench/ensemble.py --device cuda --backend torch --out "$OUT/ensemble_torch.json" 2>&1 | tee -a "$LOG"
# 4 server processes on one port, 8 client processes (one process tops out near 1.6k RPC/s)
timeout 150 python3 bench/service.py --device cuda --max-batch 64 --concurrency 1,16,64 --server-procs 4 \
  --client-procs 8 --duration 20 --out "$OUT/service_gpu_procs4.json" 2>&1 | tee -a "$LOG"
timeout 70 python3 bench/service.py --device cuda --max-batch 64 --concurrency 64 --client-procs 8 \
  --duration 20 --out "$OUT/service_gpu_procs1.json" 2>&1 | tee -a "$LOG"
