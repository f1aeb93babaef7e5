#!/usr/bin/env bash
# Ensemble engine (issue 5) and gRPC service (issue 7) on one GPU. Needs .gpu_protobuf carried.
set -u
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.gpu_protobuf:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
timeout 150 python3 bench/ensemble.py --device cuda --compile off --out "$OUT/ensemble_default.json"
timeout 120 python3 bench/ensemble.py --device cuda --compile on --batches 1024 --out "$OUT/ensemble_compiled.json"
timeout 100 python3 bench/service.py --device cuda --max-batch 64 --concurrency 1,16,64 --client-procs 4 \
  --duration 20 --out "$OUT/service_h100.json"
timeout 60 python3 bench/service.py --device cuda --models null --max-batch 64 --concurrency 64 --client-procs 4 \
  --duration 15 --out "$OUT/service_ceiling.json"
