#!/usr/bin/env bash
# The shipped bundle (issue 16) and the 3-seed CV of its recipe, in one device call.
# Usage (device machine, repo root, runs/voi5 carried): bash bench/gpu/ship_run.sh OUTDIR [DEADLINE_S]
set -u
OUTDIR=${1:?outdir}; DEADLINE=${2:-480}
DATA=runs/voi5; FOV=24,24,6; R=examples/recipes
mkdir -p "$OUTDIR"
( timeout "$DEADLINE" python3 -m naslung ensemble --configs $R/medium-m1.json $R/medium-m1.json $R/medium-m1.json \
    --data $DATA --fov-mm $FOV --all-data --train-config $R/lidc-voi-softaux-m1.json --device cuda --no-progress \
    --version lidc-voi-2026-12-04 --out "$OUTDIR/lidc-voi-ensemble" > "$OUTDIR/bundle.log" 2>&1
  echo "$(date +%T) bundle rc=$?" ) &
for s in 0 1 2; do
  ( timeout "$DEADLINE" python3 scripts/real_data_cv.py --data $DATA --fov-mm $FOV --model $R/medium-m1.json \
      --epochs 60 --patience 20 --rot90 --soft-labels 0.5 --aux-weight 0.3 --seeds $s --tta --device cuda \
      --no-progress --out "$OUTDIR/cv-seed$s" > "$OUTDIR/cv-seed$s.log" 2>&1; echo "$(date +%T) cv seed $s rc=$?" ) &
done
wait
