#!/usr/bin/env bash
# The paper's Table 1 (Fang et al., AAAI-22) as bench/reproduce.py runs it: for CIFAR-10 and
# CIFAR-100, the five teacher/student pairs of scripts/fast_cifar.sh, Fast-2/5/10, the baselines of
# scripts/baselines_cifar.sh, KD on real data and the student alone; table.md, plot.png and
# results.json in run/reproduce/<dataset>/. The settings live in bench/reproduce.py
# (CIFAR_PAIRS, CIFAR_METHODS); `python -m bench.reproduce --protocol cifar10 --dry_run` prints
# every run's command line. Finished runs are read back (--reuse), so an interrupted sweep
# continues where it stopped.
#   bash scripts/reproduce_cifar.sh                                   # the full protocol (GPU, days)
#   BUDGET=0.05 REPEATS=3 bash scripts/reproduce_cifar.sh             # scaled down
#   DATASETS=cifar10 PAIRS=wrn40_2:wrn16_1 METHODS="fast_meta deepinv kd_real" BUDGET=0.02 \
#       bash scripts/reproduce_cifar.sh                               # one pair, a few rows
# Teachers: TEACHER_DIR/<dataset>_<teacher>.pth (or .../best.pt), else run/teachers/, else trained.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASETS=${DATASETS:-"cifar10 cifar100"}
DATA_ROOT=${DATA_ROOT:-./data/torchdata}
BUDGET=${BUDGET:-1}
REPEATS=${REPEATS:-1}
EXTRA=${EXTRA:-}

for dataset in $DATASETS; do
  args=(--protocol "$dataset" --data_root "$DATA_ROOT" --budget "$BUDGET" --repeats "$REPEATS" --reuse)
  if [ -n "${TEACHER_DIR:-}" ]; then args+=(--teacher_dir "$TEACHER_DIR"); fi
  if [ -n "${PAIRS:-}" ]; then read -r -a pairs <<<"$PAIRS"; args+=(--pairs "${pairs[@]}"); fi
  if [ -n "${METHODS:-}" ]; then read -r -a methods <<<"$METHODS"; args+=(--methods "${methods[@]}"); fi
  # shellcheck disable=SC2086
  python -m bench.reproduce "${args[@]}" $EXTRA
done
