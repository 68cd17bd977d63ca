#!/usr/bin/env bash
# The baselines fast_meta is measured against, with the reference settings
# (Fast-Datafree scripts/deepinv_cifar.sh, scripts/cmi_cifar.sh, and for the generative methods
# the settings of its datafree_kd.py driver: CIFAR-10 WRN40-2 -> WRN16-1, ep_steps 400).
#   METHODS="dafl zskt" DATASET=cifar10 bash scripts/baselines_cifar.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-cifar10}
DATA_ROOT=${DATA_ROOT:-./data/torchdata}
TEACHER=${TEACHER:-wrn40_2}
STUDENT=${STUDENT:-wrn16_1}
EPOCHS=${EPOCHS:-200}
METHODS=${METHODS:-"deepinv deepinv_fast cmi cmi_fast dafl zskt dfad dfq"}
EXTRA=${EXTRA:-}
CKPT=${TEACHER_CKPT:-run/teachers/${DATASET}_${TEACHER}/best.pt}

for m in $METHODS; do
  recipe="recipes/${m}_cifar.yaml"  # each method's published settings (deepinv_fast, cmi_fast: the cheap lines)
  if [ ! -f "$recipe" ]; then echo "unknown baseline $m (no $recipe)" >&2; exit 2; fi
  python kd/faster_data_free_kd.py --config "$recipe" --dataset "$DATASET" --data_root "$DATA_ROOT" \
    --teacher "$TEACHER" --student "$STUDENT" --teacher_ckpt "$CKPT" --seed 0 --epochs "$EPOCHS" \
    --save_dir "run/baselines_${DATASET}/${m}" $EXTRA
done
