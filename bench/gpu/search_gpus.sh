#!/usr/bin/env bash
# The same NNI search on one GPU and on two (issue 19): `GPUS=0,1 bench/gpu/search_gpus.sh` or `GPUS=0 ...`.
# 20 trials, 8 epochs, 4 trials per GPU (concurrency = GPUs x trials per GPU). Needs .whl carried (docs/search.md).
# SEARCH_TRIALS / SEARCH_EPOCHS / SEARCH_TIMEOUT / TRIALS_PER_GPU override 20 / 8 / 280 s / 4.
set -u
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
GPUS=${GPUS:-0,1}
N_GPUS=$(echo "$GPUS" | tr ',' '\n' | grep -c .)
TPG=${TRIALS_PER_GPU:-4}
TAG=gpus$(echo "$GPUS" | tr -d ',')x$TPG
test -d /tmp/site/nni || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/card_$TAG.txt"
nproc | tee -a "$OUT/card_$TAG.txt"
timeout "${SEARCH_TIMEOUT:-280}" python3 bench/search.py --prepare lidc-shapes --data /tmp/nl-data --out /tmp/nl-search-$TAG \
  --trials "${SEARCH_TRIALS:-20}" --concurrency $((N_GPUS * TPG)) --gpus "$GPUS" --trials-per-gpu "$TPG" --device cuda \
  --epochs "${SEARCH_EPOCHS:-8}" --json "$OUT/bench_search_$TAG.json" 2>&1 | grep -v "epoch [0-9]*/" | tail -40
(cd /tmp/nl-search-$TAG && tar czf "$OUT/search_$TAG.tar.gz" trials.csv pareto.csv summary.json 2>/dev/null)
