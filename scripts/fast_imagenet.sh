#!/usr/bin/env bash
# fast_meta on ImageNet with the hyper-parameters logged by Fast-Datafree (logs/*.txt of
# fast_meta_imagenet.py): spatial-latent generator, meta-learned latents
# re-sampled every 50 rounds (5 epochs at 10 rounds per epoch) with the meta-optimiser rebuilt,
# targets drawn afresh every round, Reptile without the x67 factor, last-step images pooled,
# RandomResizedCrop(0.75-1) + flip for synthesis and (0.08-1) + flip for KD samples, eta_min 0,
# g/kd/ep steps 50/100/1000, batch 100, 400 epochs, T 5.
#   TEACHER=resnet50_imagenet STUDENT=resnet18_imagenet TEACHER_CKPT=resnet50-0676ba61.pth \
#   DATA_ROOT=/data CMI_INIT=run/imagenet_init bash scripts/fast_imagenet.sh
# The teacher weights are a local file (torchvision's .pth works as is); nothing is downloaded.
# ADV is 1.0 for R50->R18 and 0.1 for R50->R50 and R50->MobileNetV2 in the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=${TEACHER:-resnet50_imagenet}
STUDENT=${STUDENT:-resnet18_imagenet}
TEACHER_CKPT=${TEACHER_CKPT:?set TEACHER_CKPT to the teacher weights file}
DATA_ROOT=${DATA_ROOT:-./data}
ADV=${ADV:-1.0}
EPOCHS=${EPOCHS:-400}
INIT=()
if [ -n "${CMI_INIT:-}" ]; then INIT=(--cmi_init "$CMI_INIT"); fi
python kd/faster_data_free_kd.py --method fast_meta --dataset imagenet --data_root "$DATA_ROOT" \
  --teacher "$TEACHER" --student "$STUDENT" --teacher_ckpt "$TEACHER_CKPT" \
  --batch_size 100 --synthesis_batch_size 100 --lr 0.1 --epochs "$EPOCHS" --warmup 0 \
  --g_steps 50 --kd_steps 100 --ep_steps 1000 --T 5 --adv "$ADV" --bn 0.1 --oh 0.1 --bn_mmt 0.9 \
  --lr_g 2e-4 --lr_z 0.01 --lr_g_meta 1e-4 --lr_z_meta 5e-3 --meta_z --z_reinit 5 --eta_min 0 \
  --is_maml 0 --reptile_scale 1 --keep last --generator deep "${INIT[@]}" ${EXTRA:-}
