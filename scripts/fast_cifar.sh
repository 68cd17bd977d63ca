#!/usr/bin/env bash
# Fast-Datafree's published CIFAR sweep (scripts/fast_cifar.sh of zju-vipa/Fast-Datafree):
# fast_meta with g_steps 2 / 5 / 10 for the three teacher families of the paper's tables.
#   DATASET=cifar10 bash scripts/fast_cifar.sh          # default cifar100
#   EPOCHS=30 WARMUP=3 bash scripts/fast_cifar.sh       # a scaled-down sweep
# Teachers are read from run/teachers/<dataset>_<teacher>/best.pt (python cifar100.py --model ...),
# or TEACHER_DIR/<dataset>_<teacher>.pth when TEACHER_DIR is set.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-cifar100}
DATA_ROOT=${DATA_ROOT:-./data/torchdata}
EPOCHS=${EPOCHS:-220}
WARMUP=${WARMUP:-20}
EXTRA=${EXTRA:-}

ckpt() {  # teacher checkpoint path
  if [ -n "${TEACHER_DIR:-}" ]; then echo "$TEACHER_DIR/${DATASET}_$1.pth"; else echo "run/teachers/${DATASET}_$1/best.pt"; fi
}

# teacher student adv oh tag
PAIRS=(
  "resnet34 resnet18 1.33 0.5 r34"
  "vgg11 resnet18 1.0 0.5 vgg"
  "wrn40_2 wrn16_1 1.1 0.4 wrn"
  "wrn40_2 wrn40_1 1.1 0.4 wrnS401"
  "wrn40_2 wrn16_2 1.1 0.4 wrnS162"
)
# g_steps lr_g lr_z
STEPS=("2 5e-3 0.015" "5 3e-3 0.01" "10 2e-3 0.01")

for pair in "${PAIRS[@]}"; do
  read -r teacher student adv oh tag <<<"$pair"
  for s in "${STEPS[@]}"; do
    read -r g lr_g lr_z <<<"$s"
    python kd/faster_data_free_kd.py --method fast_meta --dataset "$DATASET" --data_root "$DATA_ROOT" \
      --teacher "$teacher" --student "$student" --teacher_ckpt "$(ckpt "$teacher")" \
      --batch_size 256 --lr 0.2 --kd_steps 400 --ep_steps 400 --adv "$adv" --bn 10.0 --oh "$oh" \
      --act 0 --balance 0 --T 20 --seed 0 --bn_mmt 0.9 --warmup "$WARMUP" --epochs "$EPOCHS" \
      --g_steps "$g" --lr_z "$lr_z" --lr_g "$lr_g" --is_maml 1 --reset_l0 1 --reset_bn 0 \
      --save_dir "run/fast_${DATASET}/${tag}-${g}" $EXTRA
  done
done
