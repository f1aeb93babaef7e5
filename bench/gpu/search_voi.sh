#!/usr/bin/env bash
# Issue 16 on one GPU. Carry [".gpu_nni"]: nnisite.tar.xz (NNI 3.0 and the pure-Python packages the
# GPU image lacks, unpacked site dir, xz: 40 MB; see bench/gpu/README.md) and voi5_fov.tgz (runs/voi5_fov).
# Usage: bash bench/gpu/search_voi.sh fill     # same 20-trial lidc-shapes search, 4 vs 16 trials per GPU
#        bash bench/gpu/search_voi.sh search [DEADLINE_S]   # the real-CT search (examples/search_lidc_voi.yml)
set -u
MODE=${1:?fill|search}; DEADLINE=${2:-500}
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
mkdir -p /tmp/site && tar -xJf .gpu_nni/nnisite.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/card.txt"
if [ "$MODE" = fill ]; then
  for slots in 4 16; do
    echo "=== $(date +%T) lidc-shapes search, 20 trials, 8 epochs, $slots trials per GPU"
    timeout -s TERM 280 python3 bench/search.py --prepare lidc-shapes --data /tmp/nl-data --out /tmp/nl-fill-$slots \
      --trials 20 --concurrency $slots --gpus 0 --trials-per-gpu $slots --device cuda --epochs 8 \
      --json "$OUT/fill_$slots.json" > "$OUT/fill_$slots.log" 2>&1
    echo "rc=$?"; tail -12 "$OUT/fill_$slots.log"
  done
else
  mkdir -p runs && tar -xzf .gpu_nni/voi5_fov.tgz -C runs || exit 1
  echo "=== $(date +%T) real-CT search, deadline $DEADLINE s"
  timeout -s TERM "$DEADLINE" python3 bench/search.py --data runs/voi5_fov --config examples/search_lidc_voi.yml \
    --out /tmp/voi-search --trials 60 --concurrency 16 --gpus 0 --trials-per-gpu 16 --device cuda \
    --json "$OUT/search_voi_bench.json" > "$OUT/search_voi.log" 2>&1
  echo "rc=$? $(date +%T)"; tail -15 "$OUT/search_voi.log"
  (cd /tmp/voi-search && tar czf "$OUT/search_voi.tgz" trials trials.csv pareto.csv pareto.png summary.json \
     search_config.json top pruned.csv bench_search.json 2>/dev/null); ls -la "$OUT"
fi
