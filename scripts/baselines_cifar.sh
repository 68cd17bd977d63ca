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
COMMON=(--dataset "$DATASET" --data_root "$DATA_ROOT" --teacher "$TEACHER" --student "$STUDENT"
        --teacher_ckpt "$CKPT" --batch_size 256 --seed 0 --epochs "$EPOCHS" --act 0 --balance 0)

for m in $METHODS; do
  case $m in
    deepinv)      args=(--method deepinv --lr 0.1 --kd_steps 400 --ep_steps 400 --g_steps 1000 --lr_g 0.1 --adv 1 --bn 10 --oh 1 --T 20) ;;
    deepinv_fast) args=(--method deepinv --lr 0.1 --kd_steps 200 --ep_steps 200 --g_steps 10 --lr_g 1 --adv 1 --bn 10 --oh 1 --T 20) ;;
    cmi)          args=(--method cmi --lr 0.1 --kd_steps 400 --ep_steps 400 --g_steps 200 --lr_g 1e-3 --adv 0.5 --bn 1 --oh 1 --cr 0.8 --cr_T 0.2 --T 20) ;;
    cmi_fast)     args=(--method cmi --lr 0.1 --kd_steps 400 --ep_steps 400 --g_steps 5 --lr_g 1e-3 --adv 0.5 --bn 1 --oh 1 --cr 0 --cr_T 0.2 --T 20) ;;
    dafl)         args=(--method dafl --lr 0.1 --kd_steps 5 --ep_steps 400 --g_steps 1 --lr_g 1e-3 --oh 1 --act 0.001 --balance 20) ;;
    zskt)         args=(--method zskt --lr 0.1 --kd_steps 5 --ep_steps 400 --g_steps 1 --lr_g 1e-3 --adv 1) ;;
    dfad)         args=(--method dfad --lr 0.1 --kd_steps 5 --ep_steps 400 --g_steps 1 --lr_g 1e-3 --adv 1) ;;
    dfq)          args=(--method dfq --lr 0.1 --kd_steps 10 --ep_steps 400 --g_steps 1 --lr_g 1e-3 --adv 1 --bn 1 --oh 1 --balance 20) ;;
    *) echo "unknown baseline $m" >&2; exit 2 ;;
  esac
  python kd/faster_data_free_kd.py "${COMMON[@]}" "${args[@]}" --save_dir "run/baselines_${DATASET}/${m}" $EXTRA
done
