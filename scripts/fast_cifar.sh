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

# teacher student adv oh tag: the pairs of the published sweep (adv and oh are per pair)
PAIRS=(
  "resnet34 resnet18 1.33 0.5 r34"
  "vgg11 resnet18 1.0 0.5 vgg"
  "wrn40_2 wrn16_1 1.1 0.4 wrn"
  "wrn40_2 wrn40_1 1.1 0.4 wrnS401"
  "wrn40_2 wrn16_2 1.1 0.4 wrnS162"
)
# g_steps and its recipe (lr_g, lr_z and every other setting are in the file)
STEPS=("2 recipes/fast_meta_cifar_g2.yaml" "5 recipes/fast_meta_cifar.yaml" "10 recipes/fast_meta_cifar_g10.yaml")

for pair in "${PAIRS[@]}"; do
  read -r teacher student adv oh tag <<<"$pair"
  for s in "${STEPS[@]}"; do
    read -r g recipe <<<"$s"
    python kd/faster_data_free_kd.py --config "$recipe" --dataset "$DATASET" --data_root "$DATA_ROOT" \
      --teacher "$teacher" --student "$student" --teacher_ckpt "$(ckpt "$teacher")" --adv "$adv" --oh "$oh" \
      --seed 0 --warmup "$WARMUP" --epochs "$EPOCHS" --save_dir "run/fast_${DATASET}/${tag}-${g}" $EXTRA
  done
done
