#!/usr/bin/env bash
# Full ICAM pipeline on COCO (2014 by default; COCO_YEAR=2017 for 2017). Prepare data first:
#   bash config_coco.sh           # -> data/coco with label PNGs, lists and cls_labels_<split>.npz
#   NPROC=8 bash run_all_coco.sh
set -euo pipefail
# Relative paths in EXPDIR, DATA_ROOT, WEIGHTS, ... are the caller's; then cd to the repository.
source "$(dirname "$0")/tools/runner/runner_args.sh"
COCO_YEAR=${COCO_YEAR:-2014}
case $COCO_YEAR in 2014|2017) ;; *) echo "COCO_YEAR must be 2014 or 2017, not '$COCO_YEAR'" >&2; exit 2;; esac
export DATASET=coco
export DATA_ROOT=${DATA_ROOT:-data/coco}
export EXPDIR=${EXPDIR:-exp/coco${COCO_YEAR}}
export TRAIN_SPLIT=${TRAIN_SPLIT:-train${COCO_YEAR}} EVAL_TRAIN_SPLIT=${EVAL_TRAIN_SPLIT:-train${COCO_YEAR}}
export VAL_SPLIT=${VAL_SPLIT:-val${COCO_YEAR}}
export SEG_CONFIG=${SEG_CONFIG:-coco/config_coco${COCO_YEAR}.py}
source tools/runner/pipeline.sh
