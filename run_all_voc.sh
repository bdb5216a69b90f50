#!/usr/bin/env bash
# Full ICAM reproduction on PASCAL VOC 2012 + SBD (paper settings). Prepare data first:
#   bash config_voc.sh            # -> data/VOCdevkit/VOC2012 with train_aug.txt and cls_labels.npz
#   NPROC=4 bash run_all_voc.sh   # 4 GPUs with torchrun; STAGES="2 3" resumes after stage 1
set -euo pipefail
# Relative paths in EXPDIR, DATA_ROOT, WEIGHTS, ... are the caller's; then cd to the repository.
source "$(dirname "$0")/tools/runner/runner_args.sh"
export DATASET=voc
export DATA_ROOT=${DATA_ROOT:-data/VOCdevkit/VOC2012}
export EXPDIR=${EXPDIR:-exp/voc}
export TRAIN_SPLIT=${TRAIN_SPLIT:-train_aug} EVAL_TRAIN_SPLIT=${EVAL_TRAIN_SPLIT:-train} VAL_SPLIT=${VAL_SPLIT:-val}
export SEG_CONFIG=${SEG_CONFIG:-voc/config_voc2012.py}
source tools/runner/pipeline.sh
