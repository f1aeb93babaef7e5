#!/usr/bin/env bash
# Real-CT recipe sweep on one GPU (issue 15): every job a 5-fold patient-grouped CV on lidc-voi,
# all jobs at once on the card (small 3D nets leave it mostly idle one at a time).
# Usage (device machine, repo root, runs/voi5 prepared here with `naslung prepare --source voi
# --folds 5 --fov-mm none --out runs/voi5` and carried):
#   bash bench/gpu/quality_sweep.sh JOBSET OUTDIR [EPOCHS] [DEADLINE_S]
# JOBSET: sweep (recipe ablations + peers, one seed) | final (chosen recipe and peers, three seeds).
set -u
JOBSET=${1:?jobset}; OUTDIR=${2:?outdir}; EPOCHS=${3:-60}; DEADLINE=${4:-480}
DATA=runs/voi5; FOV=24,24,6
mkdir -p "$OUTDIR"
COMMON="--data $DATA --epochs $EPOCHS --patience 20 --device cuda --no-progress --tta"
run() {  # name, script, args...
  local name=$1; shift
  ( timeout "$DEADLINE" python3 "$@" $COMMON --out "$OUTDIR/$name" > "$OUTDIR/$name.log" 2>&1;
    echo "$(date +%T) $name rc=$?" ) &
}
CV=scripts/real_data_cv.py; PEER=bench/peers.py
RECIPE="--rot90 --soft-labels 0.5 --aux-weight 0.3"
if [ "$JOBSET" = sweep ]; then
  run base       $CV --fov-mm $FOV --model small --rot90
  run base-m1    $CV --fov-mm $FOV --model small --rot90 --margin 1
  run soft       $CV --fov-mm $FOV --model small --rot90 --soft-labels 0.5
  run aux        $CV --fov-mm $FOV --model small --rot90 --aux-weight 0.3
  run softaux    $CV --fov-mm $FOV --model small $RECIPE
  run softaux-m1 $CV --fov-mm $FOV --model small $RECIPE --margin 1
  run softaux-exact $CV --fov-mm $FOV --model small $RECIPE --cbam naslung-exact
  run softaux-smx $CV --fov-mm $FOV --model small $RECIPE --head softmax
  run medium-softaux $CV --fov-mm $FOV --model medium $RECIPE
  run prepared-softaux $CV --model small $RECIPE --border-jitter 6
  run peer-r18   $PEER --fov-mm $FOV --peer resnet18 --rot90
  run peer-d121  $PEER --fov-mm $FOV --peer densenet121 --rot90
  run peer-r18-prepared $PEER --peer resnet18 --rot90
elif [ "$JOBSET" = round2 ]; then
  SOFT="--rot90 --soft-labels 0.5"; M1=examples/recipes
  run soft-m1        $CV --fov-mm $FOV --model $M1/small-m1.json $SOFT
  run softaux-m1     $CV --fov-mm $FOV --model $M1/small-m1.json $SOFT --aux-weight 0.3
  run medium-soft-m1 $CV --fov-mm $FOV --model $M1/medium-m1.json $SOFT
  run medium-softaux-m1 $CV --fov-mm $FOV --model $M1/medium-m1.json $SOFT --aux-weight 0.3
  run soft-smx       $CV --fov-mm $FOV --model small --head softmax $SOFT
  run prepared-soft-m1 $CV --model $M1/small-m1.json $SOFT --border-jitter 6
  run peer-r18-prepared $PEER --peer resnet18 --rot90
  run peer-d121      $PEER --fov-mm $FOV --peer densenet121 --rot90
  for m in small medium; do  # shipped-bundle candidates: 3 members, every fold but the validation fold
    ( timeout "$DEADLINE" python3 -m naslung ensemble --configs $M1/$m-m1.json $M1/$m-m1.json $M1/$m-m1.json \
        --data $DATA --fov-mm $FOV --all-data --train-config $M1/lidc-voi-soft-m1.json --device cuda \
        --no-progress --out "$OUTDIR/bundle-$m" > "$OUTDIR/bundle-$m.log" 2>&1; echo "$(date +%T) bundle-$m rc=$?" ) &
  done
fi
wait
python3 - "$OUTDIR" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); rows = {}
for p in sorted(out.glob("*/real_data_cv.json")):
    d = json.loads(p.read_text()); c = d["cnn"]
    rows[p.parent.name] = {"params": d["params"], "mean": c["mean"], "std": c["std"], "pooled": c["pooled"],
                           "tta": c["tta"] and {"mean": c["tta"]["mean"], "std": c["tta"]["std"]},
                           "single": c["single"], "baselines": d["baselines"], "train": d["train"],
                           "model": d["model"], "crop_spec": d["crop_spec"], "lambda_final": c["lambda_final"],
                           "seconds": c["seconds"], "device": d["device"], "command": d["command"]}
    m, t = c["mean"], (c["tta"] or {}).get("mean", {})
    print(f"{p.parent.name:<22} acc {m['accuracy']:.3f} auc {m['auc']:.3f}  tta acc {t.get('accuracy', float('nan')):.3f} auc {t.get('auc', float('nan')):.3f}  {c['seconds']:.0f}s")
(out / "summary.json").write_text(json.dumps(rows, indent=1))
PY
