#!/usr/bin/env bash
# fast_meta's meta-learning variants on real MNIST (README "Benchmarks"): a LeNet-5-BN teacher
# trained for one epoch from ../shared/data (or DATA_ROOT), then FOMAML / Reptile / second-order
# MAML (through all inner steps, and truncated to the last 2) for seeds 0-2 and `fast` (no
# meta-learning) for seed 0, with the settings of tests/test_datafree_mnist.py. Prints one summary
# line per run (about 15 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT=${DATA_ROOT:-../shared/data}
OUT=${OUT:-run/mnist_meta_variants}
python cifar100.py --model lenet5_bn --dataset mnist --epochs 1 --lr 0.05 --schedule cosine \
  --data_root "$DATA_ROOT" --no_download --save_dir "$OUT/teacher" --no_progress | tail -1
base=(--teacher lenet5_bn --student lenet5_half_bn --dataset mnist --data_root "$DATA_ROOT" --no_download
      --teacher_ckpt "$OUT/teacher/best.pt" --no_progress --lr 0.1 --T 20 --bn 10 --oh 0.5 --adv 1.0
      --bn_mmt 0.9 --lr_g 3e-3 --lr_z 0.01 --g_steps 5 --warmup 1 --ngf 32 --synthesis_batch_size 128
      --batch_size 128 --kd_steps 20 --ep_steps 40 --epochs 6)
for seed in 0 1 2; do
  for m in 1 0 2 2t2; do
    flags=(--is_maml "${m%%t*}")
    if [ "$m" = 2t2 ]; then flags+=(--maml_truncate 2); fi
    python kd/faster_data_free_kd.py --method fast_meta "${base[@]}" "${flags[@]}" --seed "$seed" \
      --save_dir "$OUT/maml${m}_seed${seed}" | tail -1 | sed "s/^/is_maml $m seed $seed: /"
  done
done
python kd/faster_data_free_kd.py --method fast "${base[@]}" --seed 0 --save_dir "$OUT/fast_seed0" | tail -1 | sed "s/^/fast seed 0: /"
