#!/usr/bin/env bash
# The whole ICAM pipeline on the procedurally generated VOC-format dataset, on the CPU, in minutes.
# `make demo` runs this inside .venv. Sizes are tuned for a 2-core laptop; override by env vars:
#   DEMO_NUM_TRAIN, DEMO_NUM_VAL, DEMO_SIZE (image side), DEMO_WIDTH (ResNet-38 width multiplier),
#   DEMO_CAM_STEPS, DEMO_AFF_STEPS, DEMO_SEG_STEPS, DEMO_SEED (the --seed of the three trainings),
#   DEMO_REGIME (paper, the default: the paper's stage losses on the shipped synthetic-pretrained
#   trunk; scratch: the earlier GAP baseline from random initialisation; docs/DEMO.md),
#   DEMO_WEIGHTS (that trunk; none = the paper regime from random initialisation),
#   EXPDIR, NPROC, STAGES, TARGET_MIOU (0.70: a note is printed below it), SEG_LABELS (crf; rw
#   in the paper regime), FINAL_EVAL_TRAIN (0: the final network on val only).
set -euo pipefail
# Relative paths in EXPDIR, DATA_ROOT, WEIGHTS, ... are the caller's; then cd to the repository.
source "$(dirname "$0")/tools/runner/runner_args.sh"
for v in DEMO_NUM_TRAIN DEMO_NUM_VAL DEMO_SIZE DEMO_CAM_STEPS DEMO_AFF_STEPS DEMO_SEG_STEPS \
         DEMO_BATCH OMP_NUM_THREADS; do check_var "$v" positive; done
for v in DEMO_WIDTH DEMO_LR DEMO_SEG_LR; do check_var "$v" number; done
check_var DEMO_SEED count
export PYTHON=${PYTHON:-python}
export EXPDIR=${EXPDIR:-demo_exp}
export DATASET=voc
export DATA_ROOT=${DATA_ROOT:-$EXPDIR/data/synthetic}
export TRAIN_SPLIT=train EVAL_TRAIN_SPLIT=train VAL_SPLIT=val
# DEMO_REGIME=paper: the paper's losses and schedule on the shipped synthetic-pretrained trunk;
# scratch: the earlier baseline from random initialisation (GAP only, docs/DEMO.md).
REGIME=${DEMO_REGIME:-paper}
case $REGIME in
  paper) if [ -z "${DEMO_WEIGHTS:-}" ] && [ "${DEMO_WIDTH:-0.125}" != 0.125 ]; then
           echo "$(basename "$0"): the shipped trunk pretrained/synthetic_trunk_w0.125.pth has width 0.125, not DEMO_WIDTH=$DEMO_WIDTH; set DEMO_WEIGHTS to a trunk of that width (python -m tools.experiments.pretrain_trunk) or to none" >&2
           exit 2
         fi
         export WEIGHTS=${DEMO_WEIGHTS:-pretrained/synthetic_trunk_w0.125.pth}
         export SEG_LABELS=${SEG_LABELS:-rw} ;;
  scratch) export WEIGHTS=none
           export SEG_LABELS=${SEG_LABELS:-crf} ;;
  *) echo "$(basename "$0"): DEMO_REGIME must be paper or scratch, not '$REGIME'" >&2; exit 2;;
esac
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export TARGET_MIOU=${TARGET_MIOU:-0.70}   # the demo's target; below it the run ends with a note
# The final network is scored on val only, as the paper reports it; FINAL_EVAL_TRAIN=1 adds the
# train split (about 50 s more).
export FINAL_EVAL_TRAIN=${FINAL_EVAL_TRAIN:-0}

N_TRAIN=${DEMO_NUM_TRAIN:-400}
N_VAL=${DEMO_NUM_VAL:-100}
SIZE=${DEMO_SIZE:-96}
WIDTH=${DEMO_WIDTH:-0.125}
CAM_STEPS=${DEMO_CAM_STEPS:-1200}
AFF_STEPS=${DEMO_AFF_STEPS:-1000}
BATCH=${DEMO_BATCH:-8}
SEED=${DEMO_SEED:-0}
CROP=$SIZE

# The synthetic dataset, made by the pipeline after its checks (under its lock, with a failing
# command's reason printed) when DATA_ROOT has no cls_labels.npz: the demo's own folder is
# (re)generated; any other folder only when new or empty, never written over.
prepare_data() {
  [ ! -e "$DATA_ROOT/cls_labels.npz" ] || return 0
  local over=()
  if [ "$DATA_ROOT" = "$EXPDIR/data/synthetic" ]; then   # both made absolute by the pipeline
    over=(--overwrite)
  elif [ -d "$DATA_ROOT" ] && [ -n "$(ls -A "$DATA_ROOT")" ]; then
    echo "DATA_ROOT $DATA_ROOT has no cls_labels.npz: the demo generates its dataset only into a new or empty folder; for a VOC-layout dataset there, make its labels first (python -m tools.data.make_cls_labels --data_root $DATA_ROOT)" >&2
    exit 2
  fi
  echo "[data] synthetic VOC-format dataset: $N_TRAIN train / $N_VAL val images at ${SIZE}px -> $DATA_ROOT"
  run_logged make_synthetic_voc "$PYTHON" -m tools.data.make_synthetic_voc --out "$DATA_ROOT" \
    --num_train "$N_TRAIN" --num_val "$N_VAL" --size "$SIZE" --seed 0 "${over[@]}"
  run_logged make_cls_labels "$PYTHON" -m tools.data.make_cls_labels --data_root "$DATA_ROOT"
}

COMMON="--seed $SEED --backbone_width $WIDTH --batch_size $BATCH --num_workers 1 --device cpu --threads ${OMP_NUM_THREADS}"
export SEG_CONFIG=voc/config_voc2012.py
case $REGIME in
paper)
  # The paper's regime on the shipped synthetic-pretrained trunk (pretrained/README.md): every
  # training flag at its original default (importance sampling w 0.8, FSL, max-pooled
  # revised-CAM loss, frozen BN, dropout, poly SGD with the 10x/20x multipliers, stage 3 on the
  # random-walk labels); besides sizes, step counts and CPU settings, three things differ, each
  # measured in docs/DEMO.md:
  #  - stage 1: CAMs from the ReLU'd logits narrowed by a power (--cam_source relu_logits
  #    --cam_power 2.4) instead of the softmax with its background channel;
  #  - stage 2: the walk on the image enlarged 2x (a 24x24 grid instead of 12x12 at 96 px),
  #    2^3 steps, and a dense CRF on its scores (--upscale 2 --logt 3 --crf);
  #  - stage 3: poly AdamW, BN momentum 0.1, no dropout (the scratch regime's recipe): 800 steps
  #    of the paper's SGD recipe (20,000 in the paper) lose whole classes; and random scaling
  #    by 1-2 instead of 0.5-1.5 (--set RANDOM_SCALE=...), for 600 steps: at 96 px a ring
  #    shrunk by half is thinner than the stride-8 output grid, and the network learns it worse.
  export CAM_TRAIN_ARGS="$COMMON --crop_size $CROP --resize_long $SIZE $((SIZE * 5 / 4)) --max_steps $CAM_STEPS ${DEMO_CAM_TRAIN_ARGS:-}"
  export AFF_TRAIN_ARGS="$COMMON --crop_size $CROP --resize_long $SIZE $((SIZE * 3 / 2)) --max_steps $AFF_STEPS ${DEMO_AFF_TRAIN_ARGS:-}"
  export AFF_INFER_ARGS="--backbone_width $WIDTH --device cpu --upscale 2 --logt 3 --crf ${DEMO_AFF_INFER_ARGS:-}"
  SEG_RECIPE="--max_steps ${DEMO_SEG_STEPS:-600} --set RANDOM_SCALE=(1.0,2.0)"
  ;;
scratch)
  # Every network from random initialisation, where the original regime does not work; each
  # deviation is a flag (docs/DEMO.md says why each is needed):
  #  - all stages: BN statistics train, no dropout, poly AdamW;
  #  - stages 1 and 2: one learning rate for every layer; stage 3 keeps the 10x/20x multipliers;
  #  - stage 1: GAP classification only (no importance sampling, no max-pooled revised-CAM loss,
  #    no FSL; from scratch they collapse onto a zero-padding "register" at the image border);
  #    CAMs from the ReLU'd logits, narrowed with a power;
  #  - stage 2: background power 4 and a dense CRF on the random-walk scores;
  #  - stage 3: BN momentum 0.1, on the alpha-4 CRF maps (SEG_LABELS=crf).
  SCRATCH="--no-frozen_bn --no-dropout --optimizer adamw --lr ${DEMO_LR:-0.001} --lr_mults 1 1 1 1"
  export CAM_TRAIN_ARGS="$COMMON --crop_size $CROP --resize_long $SIZE $((SIZE * 5 / 4)) --max_steps $CAM_STEPS $SCRATCH --loss_weight 0 --rv_pooling avg --no-fsl ${DEMO_CAM_TRAIN_ARGS:-}"
  export AFF_TRAIN_ARGS="$COMMON --crop_size $CROP --resize_long $SIZE $((SIZE * 3 / 2)) --max_steps $AFF_STEPS $SCRATCH ${DEMO_AFF_TRAIN_ARGS:-}"
  export AFF_INFER_ARGS="--backbone_width $WIDTH --device cpu --alpha 4 --crf ${DEMO_AFF_INFER_ARGS:-}"
  SEG_RECIPE="--max_steps ${DEMO_SEG_STEPS:-800}"
  ;;
esac
# Both regimes read the CAMs out as ReLU'd logits narrowed by a power, and train stage 3 with poly
# AdamW, BN momentum 0.1 and no dropout (docs/DEMO.md measures why).
export CAM_INFER_ARGS="--backbone_width $WIDTH --num_workers 1 --crf_workers 2 --device cpu --cam_source relu_logits --cam_power 2.4 ${DEMO_CAM_INFER_ARGS:-}"
export SEG_TRAIN_ARGS="$COMMON --crop_size $CROP $SEG_RECIPE --lr ${DEMO_SEG_LR:-0.001} --bn_momentum 0.1 --optimizer adamw --no-dropout ${DEMO_SEG_TRAIN_ARGS:-}"
export SEG_INFER_ARGS="--backbone_width $WIDTH --crf_workers 2 --device cpu ${DEMO_SEG_INFER_ARGS:-}"
source tools/runner/pipeline.sh
