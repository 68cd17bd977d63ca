#!/usr/bin/env bash
# Every data-driven KD method of the engine with its reference weights, on RepDistiller's two
# standard CIFAR-100 pairs: wrn_40_2 -> wrn_16_2 and resnet32x4 -> resnet8x4 (the CRD recipe of
# kd/train.py: 240 epochs, SGD lr 0.05, batch 64, x0.1 at 150/180/210, weight decay 5e-4).
#
# Weights: RepDistiller scripts/run_cifar_distill.sh for KD, FitNet, AT, SP, CC, VID, RKD, PKT,
# AB, FT, FSP, NST, CRD, CRD+KD; mdistiller configs for DKD (beta 6 for wrn_40_2 -> wrn_16_2,
# 8 for resnet32x4 -> resnet8x4), OFD (0.001) and KDSVD (1); DLKD for MLKD; the Zoo for DML; the
# BYOT README for BYOT; Distiller (karanchahal) for PKD, SFD, UDA, triplet_kc, multiteacher and
# the modes. Every method's defaults are its file's docstring (kd/distillers/<method>.py); the
# flags below only repeat or complete them. Teachers: scripts/fetch_pretrained_teachers.sh
# (RepDistiller's layout save/models/<arch>_vanilla/ckpt_epoch_240.pth).
#
#   bash scripts/train_distill.sh                       # everything, both pairs (weeks of GPU time)
#   PAIRS=resnet32x4:resnet8x4 METHODS="kd crd dkd" bash scripts/train_distill.sh
#   DRY_RUN=1 bash scripts/train_distill.sh             # print the commands only
#   EXTRA="--epochs 2 --steps_per_epoch 5" bash scripts/train_distill.sh   # a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."

TEACHER_DIR=${TEACHER_DIR:-save/models}
DATA_ROOT=${DATA_ROOT:-./data/torchdata}
TRIAL=${TRIAL:-1}
PAIRS=${PAIRS:-"wrn_40_2:wrn_16_2 resnet32x4:resnet8x4"}
METHODS=${METHODS:-"kd hint attention similarity correlation vid rkd pkt abound factor fsp nst crd crd_kd kdsvd \
dkd ofd mlkd dml byot triplet triplet_kc pkd sfd uda multiteacher takd nokd"}
EXTRA=${EXTRA:-}

run() {
  echo "+ python kd/train.py $*"
  if [ -z "${DRY_RUN:-}" ]; then python kd/train.py "$@"; fi
}

for pair in $PAIRS; do
  t=${pair%%:*}; s=${pair##*:}
  path_t="$TEACHER_DIR/${t}_vanilla/ckpt_epoch_240.pth"
  common=(--path_t "$path_t" --model_s "$s" --dataset cifar100 --data_root "$DATA_ROOT" --trial "$TRIAL")
  if [ "$t" = "wrn_40_2" ]; then dkd_beta=6; ta=resnet56; second=resnet56; else dkd_beta=8; ta=wrn_40_2; second=wrn_40_2; fi
  for m in $METHODS; do
    # shellcheck disable=SC2086
    case $m in
      kd)           run "${common[@]}" --distill kd -r 0.1 -a 0.9 -b 0 $EXTRA ;;
      hint)         run "${common[@]}" --distill hint -a 0 -b 100 $EXTRA ;;
      attention)    run "${common[@]}" --distill attention -a 0 -b 1000 $EXTRA ;;
      similarity)   run "${common[@]}" --distill similarity -a 0 -b 3000 $EXTRA ;;
      correlation)  run "${common[@]}" --distill correlation -a 0 -b 0.02 $EXTRA ;;
      vid)          run "${common[@]}" --distill vid -a 0 -b 1 $EXTRA ;;
      rkd)          run "${common[@]}" --distill rkd -a 0 -b 1 $EXTRA ;;
      pkt)          run "${common[@]}" --distill pkt -a 0 -b 30000 $EXTRA ;;
      abound)       run "${common[@]}" --distill abound -a 0 -b 1 $EXTRA ;;
      factor)       run "${common[@]}" --distill factor -a 0 -b 200 $EXTRA ;;
      fsp)          if [ "$t:$s" = "wrn_40_2:wrn_40_1" ]; then echo "fsp: N/A for $t -> $s (channels differ)"; \
                    else run "${common[@]}" --distill fsp -a 0 -b 50 $EXTRA; fi ;;
      nst)          run "${common[@]}" --distill nst -a 0 -b 50 $EXTRA ;;
      crd)          run "${common[@]}" --distill crd -a 0 -b 0.8 $EXTRA ;;
      crd_kd)       run "${common[@]}" --distill crd -a 1 -b 0.8 --save_dir "run/kd/cifar100-S_${s}-T_${t}-crd_kd-trial${TRIAL}" $EXTRA ;;
      kdsvd)        run "${common[@]}" --distill kdsvd -a 0 -b 1 $EXTRA ;;
      dkd)          run "${common[@]}" --distill dkd -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta "$dkd_beta" --kd_T 4 $EXTRA ;;
      ofd)          run "${common[@]}" --distill ofd -a 0 -b 0.001 $EXTRA ;;
      mlkd)         run "${common[@]}" --distill mlkd -r 1 -a 0 -b 1 --mlkd_corr 50 --mlkd_supcon 1 --mlkd_align 20 $EXTRA ;;
      dml)          run --model_s "$s" --dataset cifar100 --data_root "$DATA_ROOT" --trial "$TRIAL" --distill dml \
                        --dml_peers "$s" -r 1 -b 1 $EXTRA ;;
      byot)         run --model_s "$s" --dataset cifar100 --data_root "$DATA_ROOT" --trial "$TRIAL" --distill byot \
                        --byot_alpha 0.1 --byot_T 3 --byot_beta 1e-6 $EXTRA ;;
      triplet)      run "${common[@]}" --distill triplet --triplet_margin 1.0 $EXTRA ;;
      triplet_kc)   run "${common[@]}" --distill triplet_kc --kd_T 5 $EXTRA ;;
      pkd)          run "${common[@]}" --distill pkd --kd_T 5 $EXTRA ;;
      sfd)          run "${common[@]}" --distill sfd $EXTRA ;;
      uda)          run "${common[@]}" --distill uda -r 0.5 -a 0.5 --kd_T 5 $EXTRA ;;
      multiteacher) run "${common[@]}" --distill multiteacher -r 0.5 -a 0.5 --kd_T 5 \
                        --extra_teachers "$second=$TEACHER_DIR/${second}_vanilla/ckpt_epoch_240.pth" $EXTRA ;;
      takd)         run "${common[@]}" --distill takd --ta_model "$ta" $EXTRA ;;
      nokd)         run --model_s "$s" --dataset cifar100 --data_root "$DATA_ROOT" --trial "$TRIAL" --distill nokd $EXTRA ;;
      *)            echo "unknown method $m" >&2; exit 2 ;;
    esac
  done
done
