#!/usr/bin/env bash
# The ICAM pipeline in the original order; sourced by run_all_{voc,coco,demo}.sh, which set the
# dataset-specific variables first. Every step is skipped when its marker exists (a rerun resumes),
# logs to $EXPDIR/logs/<step>.log, and the run ends with the results table and results.json.
# A training step saves its state every SAVE_EVERY steps; a rerun after an interruption (kill,
# pre-emption, crash) continues the unfinished training from that state, with the same result
# as an uninterrupted run. SIGTERM/SIGINT to the runner stop the running step, then the runner.
#
# Environment (defaults in brackets):
#   EXPDIR [exp/<dataset>]   where checkpoints, pseudo-labels, results and logs go
#   DATA_ROOT                dataset root (VOC layout, or the COCO root)
#   DATASET [voc]            voc | coco
#   NPROC [1]                processes per node; 1 = plain python, >1 = torchrun (DDP)
#   STAGES ["1 2 3"]         which stages to run, e.g. STAGES="2 3" resumes from stage-1 artifacts
#   SAVE_EVERY [500]         training steps between saves of <ckpt>.state.pth (resume points)
#   PYTHON [.venv/bin/python when it exists, else python]   interpreter
#   TRAIN_SPLIT [train_aug]  training / pseudo-label split; EVAL_TRAIN_SPLIT [train] has GT
#   VAL_SPLIT [val]
#   FINAL_EVAL_TRAIN [1]     0: evaluate the final network on VAL_SPLIT only (the paper reports the
#                            pseudo-labels on train and the final network on val / test)
#   CAM_TRAIN_ARGS, CAM_INFER_ARGS, AFF_TRAIN_ARGS, AFF_INFER_ARGS, SEG_TRAIN_ARGS, SEG_INFER_ARGS
#                            extra flags appended to each stage's command
#   SEG_CONFIG [voc/config_voc2012.py]   stage-3 config file
#   SEG_LABELS [rw]          stage 3's pseudo-labels: rw (the paper: the random-walk labels of
#                            stage 2) or crf (the alpha-4 CRF maps of stage 1, as label PNGs)
#   WEIGHTS                  ImageNet ResNet-38 weights (.params or .pth); 'none' = from scratch
#   TARGET_MIOU              optional: print a note when the final val mIoU (a fraction) is below it
#   STOP_GRACE_S [20]        seconds a stopped step gets between SIGTERM/SIGINT and SIGKILL
#   ICAM_DEBUG               1: a failing script prints its Python traceback, not only its error line
set -euo pipefail

DATASET=${DATASET:-voc}
EXPDIR=${EXPDIR:-exp/${DATASET}}
NPROC=${NPROC:-1}
STAGES=${STAGES:-"1 2 3"}
PYTHON=${PYTHON:-python}
TRAIN_SPLIT=${TRAIN_SPLIT:-train_aug}
EVAL_TRAIN_SPLIT=${EVAL_TRAIN_SPLIT:-train}
VAL_SPLIT=${VAL_SPLIT:-val}
SEG_CONFIG=${SEG_CONFIG:-voc/config_voc2012.py}
SEG_LABELS=${SEG_LABELS:-rw}
SAVE_EVERY=${SAVE_EVERY:-500}
FINAL_EVAL_TRAIN=${FINAL_EVAL_TRAIN:-1}
case $SEG_LABELS in rw|crf) ;; *) echo "SEG_LABELS must be rw or crf, not '$SEG_LABELS'" >&2; exit 2;; esac
case $NPROC in ''|*[!0-9]*|0*) echo "NPROC must be a positive integer, not '$NPROC'" >&2; exit 2;; esac
case $FINAL_EVAL_TRAIN in 0|1) ;; *) echo "FINAL_EVAL_TRAIN must be 0 or 1, not '$FINAL_EVAL_TRAIN'" >&2; exit 2;; esac
case $SAVE_EVERY in ''|*[!0-9]*) echo "SAVE_EVERY must be a number of steps (0: only at the end), not '$SAVE_EVERY'" >&2; exit 2;; esac
read -r -a _stages <<< "${STAGES//,/ }"
for _s in "${_stages[@]}"; do
  case $_s in 1|2|3) ;; *) echo "STAGES must list stages 1 2 3 (spaces or commas), not '$STAGES'" >&2; exit 2;; esac
done
[ ${#_stages[@]} -gt 0 ] || { echo "STAGES is empty: name the stages to run, e.g. STAGES=\"1 2 3\"" >&2; exit 2; }
STAGES=" ${_stages[*]} "
WEIGHTS=${WEIGHTS:-pretrained/ilsvrc-cls_rna-a1_cls1000_ep-0001.params}
: "${DATA_ROOT:?set DATA_ROOT to the dataset root}"
read -r -a CAM_TRAIN_EXTRA <<< "${CAM_TRAIN_ARGS:-}"
read -r -a CAM_INFER_EXTRA <<< "${CAM_INFER_ARGS:-}"
read -r -a AFF_TRAIN_EXTRA <<< "${AFF_TRAIN_ARGS:-}"
read -r -a AFF_INFER_EXTRA <<< "${AFF_INFER_ARGS:-}"
read -r -a SEG_TRAIN_EXTRA <<< "${SEG_TRAIN_ARGS:-}"
read -r -a SEG_INFER_EXTRA <<< "${SEG_INFER_ARGS:-}"

mkdir -p "$EXPDIR"/{logs,ckpts,eval,.done,.timing}
DATA=(--dataset "$DATASET" --data_root "$DATA_ROOT")
# layout_info DATASET ROOT SPLIT EXPR: a property of the dataset layout (values via argv, never
# pasted into Python source, so any path works).
layout_info() {
  "$PYTHON" -c 'import os, sys
from lib.datasets import get_layout
l = get_layout(*sys.argv[1:4])
print(eval(sys.argv[4], {"l": l, "os": os}))' "$@"
}
NUM_CLASSES=$(layout_info "$DATASET" "$DATA_ROOT" "$VAL_SPLIT" "l.num_classes")

# launch MODULE ARGS...: torchrun for NPROC > 1 (multi-node: run this script under srun and set
# TORCHRUN_ARGS, e.g. "--nnodes 2 --rdzv_backend c10d --rdzv_endpoint host:29500").
launch() {
  local module=$1; shift
  if [ "$NPROC" -gt 1 ]; then
    # shellcheck disable=SC2086
    "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" ${TORCHRUN_ARGS:-} -m "$module" "$@"
  else
    "$PYTHON" -m "$module" "$@"
  fi
}

# train_flags SESSION: the periodic state saves, and --resume when an unfinished run left its
# state (a state newer than the final weights; a finished run writes its weights last).
train_flags() {
  TRAIN_FLAGS=(--save_every "$SAVE_EVERY")
  if [ -e "$1.state.pth" ] && { [ ! -e "$1.pth" ] || [ "$1.state.pth" -nt "$1.pth" ]; }; then
    TRAIN_FLAGS+=(--resume "$1.state.pth")
  fi
}

# A step runs in its own process group; SIGTERM/SIGINT to the runner are forwarded to that group
# (torchrun, its workers and the data-loader workers with it), waited for, and end the runner.
CHILD=
CHILD_NAME=
stop_step() {
  local sig=$1 code=$2
  trap - TERM INT
  if [ -n "$CHILD" ]; then
    echo "[stop] SIG$sig: stopping $CHILD_NAME" >&2
    kill -"$sig" -- -"$CHILD" 2>/dev/null || true
    set -m   # the watchdog in a group of its own, so that its sleep goes with it
    ( sleep "${STOP_GRACE_S:-20}"; kill -KILL -- -"$CHILD" 2>/dev/null ) &
    local watchdog=$!
    set +m
    wait "$CHILD" 2>/dev/null || true
    kill -- -"$watchdog" 2>/dev/null || true
    kill -KILL -- -"$CHILD" 2>/dev/null || true   # stragglers of the group, if any
  fi
  exit "$code"
}
trap 'stop_step TERM 143' TERM
trap 'stop_step INT 130' INT

# log_tail LOG: its last 30 lines without progress-bar updates (carriage-return redraws).
log_tail() {
  tr '\r' '\n' < "$1" | grep -Ev '[0-9]+/[0-9]+ \[[0-9:]+<|^[[:space:]]*$' | tail -n 30 | cut -c1-400
}

# step NAME STAGE COMMAND...: run once; skip when $EXPDIR/.done/NAME exists.
step() {
  local name=$1 stage=$2; shift 2
  if [ -e "$EXPDIR/.done/$name" ]; then
    echo "[skip] $name (done; remove $EXPDIR/.done/$name to redo)"
    return 0
  fi
  echo "[run ] $name  (log: $EXPDIR/logs/$name.log)"
  local t0=$SECONDS rc=0
  set -m   # the step gets its own process group (stop_step signals the whole group)
  "$@" > "$EXPDIR/logs/$name.log" 2>&1 < /dev/null &
  CHILD=$! CHILD_NAME=$name
  set +m
  wait "$CHILD" || rc=$?
  CHILD=
  if [ "$rc" -ne 0 ]; then
    echo "[FAIL] $name (exit $rc) — last lines of $EXPDIR/logs/$name.log:" >&2
    log_tail "$EXPDIR/logs/$name.log" >&2
    exit 1
  fi
  echo $((SECONDS - t0)) > "$EXPDIR/.timing/$stage.$name"
  touch "$EXPDIR/.done/$name"
}

evaluate() {  # evaluate NAME PRED_DIR TYPE SPLIT
  local list gt
  list=$(layout_info "$DATASET" "$DATA_ROOT" "$4" "l.list_path()")
  gt=$(layout_info "$DATASET" "$DATA_ROOT" "$4" "os.path.dirname(l.gt_path(l.ids()[0]))")
  "$PYTHON" -m tools.evaluate --pred_dir "$2" --gt_dir "$gt" --list "$list" \
    --num_classes "$NUM_CLASSES" --type "$3" --eval_workers "${EVAL_WORKERS:-2}" \
    --title "$1" --out_json "$EXPDIR/eval/$1.json"
}

P=$EXPDIR/plabels
if [[ " $STAGES " == *" 1 "* ]]; then
  train_flags "$EXPDIR/ckpts/cam"
  step train_cam 1 launch stage1_cam.train_cam "${DATA[@]}" --train_list "$TRAIN_SPLIT" \
    --session_name "$EXPDIR/ckpts/cam" --weights "$WEIGHTS" "${TRAIN_FLAGS[@]}" "${CAM_TRAIN_EXTRA[@]}"
  for split in "$VAL_SPLIT" "$TRAIN_SPLIT"; do
    step "infer_cam_$split" 1 launch stage1_cam.infer_cam "${DATA[@]}" --infer_list "$split" \
      --weights "$EXPDIR/ckpts/cam.pth" --out_cam "$P/$split/cam" --out_crf "$P/$split/crf" \
      "${CAM_INFER_EXTRA[@]}"
  done
  for split in "$VAL_SPLIT" "$EVAL_TRAIN_SPLIT"; do
    src=$VAL_SPLIT; [ "$split" = "$VAL_SPLIT" ] || src=$TRAIN_SPLIT
    step "eval_cam_$split" 1 evaluate "cam_$split" "$P/$src/cam" cam "$split"
    step "eval_crf_$split" 1 evaluate "crf_$split" "$P/$src/crf/alpha_4.0" crf "$split"
  done
fi

if [[ " $STAGES " == *" 2 "* ]]; then
  train_flags "$EXPDIR/ckpts/aff"
  step train_aff 2 launch stage2_aff.train_aff "${DATA[@]}" --train_list "$TRAIN_SPLIT" \
    --session_name "$EXPDIR/ckpts/aff" --weights "$WEIGHTS" "${TRAIN_FLAGS[@]}" \
    --la_crf_dir "$P/$TRAIN_SPLIT/crf/alpha_2.0" --ha_crf_dir "$P/$TRAIN_SPLIT/crf/alpha_4.0" \
    "${AFF_TRAIN_EXTRA[@]}"
  for split in "$VAL_SPLIT" "$TRAIN_SPLIT"; do
    step "infer_aff_$split" 2 launch stage2_aff.infer_aff "${DATA[@]}" --infer_list "$split" \
      --weights "$EXPDIR/ckpts/aff.pth" --cam_dir "$P/$split/cam" --out_rw "$P/$split/rw" \
      "${AFF_INFER_EXTRA[@]}"
  done
  for split in "$VAL_SPLIT" "$EVAL_TRAIN_SPLIT"; do
    src=$VAL_SPLIT; [ "$split" = "$VAL_SPLIT" ] || src=$TRAIN_SPLIT
    step "eval_rw_$split" 2 evaluate "rw_$split" "$P/$src/rw" png "$split"
  done
fi

if [[ " $STAGES " == *" 3 "* ]]; then
  SEG_GT=$P/$TRAIN_SPLIT/rw
  if [ "$SEG_LABELS" = crf ]; then
    SEG_GT=$P/$TRAIN_SPLIT/crf_labels/alpha_4.0
    step crf_labels 3 "$PYTHON" -m tools.crf_labels --crf_dir "$P/$TRAIN_SPLIT/crf/alpha_4.0" \
      --out_dir "$SEG_GT"
  fi
  train_flags "$EXPDIR/ckpts/final"
  step train_seg 3 launch stage3_seg.train_seg --config "$SEG_CONFIG" "${DATA[@]}" \
    --pseudo_gt "$SEG_GT" --session_name "$EXPDIR/ckpts/final" --weights "$WEIGHTS" "${TRAIN_FLAGS[@]}" \
    --set NUM_CLASSES=$((NUM_CLASSES + 1)) \
    "${SEG_TRAIN_EXTRA[@]}"
  final_splits=("$VAL_SPLIT")
  if [ "$FINAL_EVAL_TRAIN" = 1 ]; then final_splits+=("$EVAL_TRAIN_SPLIT"); fi
  for split in "${final_splits[@]}"; do
    step "infer_seg_$split" 3 launch stage3_seg.infer_seg --config "$SEG_CONFIG" "${DATA[@]}" \
      --weights "$EXPDIR/ckpts/final.pth" --infer_list "$split" \
      --out_pred "$EXPDIR/results/$split" "${SEG_INFER_EXTRA[@]}"
    step "eval_final_$split" 3 evaluate "final_$split" "$EXPDIR/results/$split" png "$split"
  done
fi

"$PYTHON" -m tools.collect_results --expdir "$EXPDIR" --val_split "$VAL_SPLIT" --train_split "$EVAL_TRAIN_SPLIT" \
  ${TARGET_MIOU:+--target_miou "$TARGET_MIOU"}
