#!/usr/bin/env bash
# Issue 16: the shipped bundle from the real-CT search, and the 5-fold CV of its members, in one device
# call. Carry [".gpu_nni", "runs/search-voi"] (.gpu_nni/voi5_fov.tgz: runs/voi5_fov; runs/search-voi:
# the search run of bench/gpu/search_voi.sh). Usage: bash bench/gpu/ship_search.sh OUTDIR [DEADLINE_S]
set -u
OUTDIR=${1:?outdir}; DEADLINE=${2:-500}
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
mkdir -p runs "$OUTDIR" && tar -xzf .gpu_nni/voi5_fov.tgz -C runs || exit 1
DATA=runs/voi5_fov; RECIPE=examples/recipes/lidc-voi-softaux-m1.json; SEARCH=runs/search-voi
# The members: the search's top by validation AUC, greedy within 5 M parameters (what --max-params does).
MEMBERS=$(python3 -c "
from naslung.ensemble.selection import load_search_candidates, select_top
c = load_search_candidates('$SEARCH')
print(' '.join(str(c[i].info['trial_id']) for i in select_top(c, 3, 'val_auc', max_params=5_000_000)))")
echo "members (trial ids): $MEMBERS"
( timeout "$DEADLINE" python3 -m naslung ensemble --search $SEARCH --data $DATA --metric val_auc --top 3 \
    --max-params 5000000 --all-data --train-config $RECIPE --device cuda --no-progress \
    --version lidc-voi-search-2026-12-04 --out "$OUTDIR/lidc-voi-ensemble" > "$OUTDIR/bundle.log" 2>&1
  echo "$(date +%T) bundle rc=$?" ) &
for tid in $MEMBERS; do
  cfg=$(grep -l "\"trial_id\": \"$tid\"" $SEARCH/trials/*.json | head -1)
  python3 -c "import json; json.dump(json.load(open('$cfg'))['model'], open('$OUTDIR/$tid.json', 'w'))"
  ( timeout "$DEADLINE" python3 scripts/real_data_cv.py --data $DATA --model "$OUTDIR/$tid.json" \
      --epochs 60 --patience 20 --rot90 --soft-labels 0.5 --aux-weight 0.3 --seeds 0 --tta --device cuda \
      --no-progress --out "$OUTDIR/cv-$tid" > "$OUTDIR/cv-$tid.log" 2>&1; echo "$(date +%T) cv $tid rc=$?" ) &
done
wait
