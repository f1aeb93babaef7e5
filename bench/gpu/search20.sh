#!/usr/bin/env bash
# 20-trial NNI search on lidc-shapes, 4 trials at once on one GPU (issue 4). Needs .whl carried.
# SEARCH_EPOCHS / SEARCH_TIMEOUT override the defaults (8 epochs, 560 s).
set -u
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card_search.txt"
timeout "${SEARCH_TIMEOUT:-560}" python3 bench/search.py --prepare lidc-shapes --data /tmp/nl-data --out /tmp/nl-search \
  --trials 20 --concurrency 4 --gpus 0 --trials-per-gpu 4 --device cuda --epochs "${SEARCH_EPOCHS:-8}" \
  --json "$OUT/bench_search.json" 2>&1 | tail -40
(cd /tmp/nl-search && tar czf "$OUT/search.tar.gz" trials.csv pareto.csv pareto.png summary.json top 2>/dev/null)
ls -la /tmp/nl-search | head -20
