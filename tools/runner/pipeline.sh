#!/usr/bin/env bash
# The ICAM pipeline in the original order; sourced by run_all_{voc,coco,demo}.sh, which set the
# dataset-specific variables first. Every step logs to $EXPDIR/logs/<step>.log and leaves a marker
# $EXPDIR/.done/<step> recording its command and the identity of its inputs (the sha256 of every
# file it reads by name, the markers of the steps it reads from); a rerun skips a step whose
# recorded command is the current one. A step whose command differs is redone with everything
# after it (inference with --overwrite), or with ON_CHANGE=stop the run stops naming the change.
# The run ends with the results table and results.json.
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
#   EVAL_WORKERS [2]         processes of each evaluation
#   STOP_GRACE_S [20]        seconds a stopped step gets between SIGTERM/SIGINT and SIGKILL
#   ICAM_DEBUG               1: a failing script prints its Python traceback, not only its error line
#   ON_CHANGE [redo]         a done step whose recorded command or inputs differ from the current
#                            ones: redo (it and every step after it), stop (exit 2 naming the step
#                            and the change; nothing is redone) or keep (keep its results and
#                            record the current command). A marker of an earlier version, without
#                            a record, stops the run unless ON_CHANGE is set explicitly.
#                            `echo keep > $EXPDIR/.done/<step>` keeps one step whatever changes.
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
check_var EVAL_WORKERS positive
check_var STOP_GRACE_S number
check_var TARGET_MIOU fraction
ON_CHANGE_SET=${ON_CHANGE:+1}
ON_CHANGE=${ON_CHANGE:-redo}
case $ON_CHANGE in redo|stop|keep) ;; *) echo "ON_CHANGE must be redo, stop or keep, not '$ON_CHANGE'" >&2; exit 2;; esac
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

# Absolute paths (a relative one was the caller's, made absolute by tools/runner/runner_args.sh; the
# defaults are the repository's, the working directory here).
EXPDIR=$(realpath -ms "$EXPDIR")
DATA_ROOT=$(realpath -ms "$DATA_ROOT")
mkdir -p "$EXPDIR"/{logs,ckpts,eval,.done,.started,.timing}
# One run per EXPDIR: the runner holds an flock on $EXPDIR/.lock for the whole run (its steps
# inherit it); a second runner stops here naming the first. The kernel drops the lock when the
# run's processes end, however they end, so a killed run leaves no lock behind.
if command -v flock > /dev/null 2>&1; then
  exec 9>> "$EXPDIR/.lock"
  if ! flock -n 9; then
    holder=$(head -n 1 "$EXPDIR/.lock" 2> /dev/null || true)
    echo "$EXPDIR is in use by another run (${holder:-its lock is being taken}); wait for it or stop it, or set another EXPDIR" >&2
    exit 2
  fi
  printf 'pid %s, %s, started %s\n' "$$" "${RUNNER_CMD:-bash $0}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$EXPDIR/.lock"
else
  echo "[warn] flock not found: nothing keeps a second run off $EXPDIR" >&2
fi

# ----------------------------------------------------------------- helpers shared by the steps

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

# ----------------------------------------------------------------- provenance of every step
# A marker $EXPDIR/.done/<step> is MARK_HEAD, comment lines (when, how long, the exact command
# run) and the record compared on every rerun: an `arg` line per word of the command (--resume,
# --save_every and --overwrite left out: they do not change a result), an `input DIGEST PATH`
# line per file the command names (its sha256: the checkpoint's sidecar when it is not older
# than the file, else computed) and an `after STEP DIGEST` line per upstream step (the sha256 of
# that step's record, "none" when it has no marker). Paths inside EXPDIR read $EXPDIR/... A marker reading `keep` is kept whatever changed; any other
# marker without MARK_HEAD was written by an earlier version.
MARK_HEAD="# icam step marker v1"

file_digest() {
  if [ -f "$1.sha256" ] && [ ! "$1" -nt "$1.sha256" ]; then
    cut -d' ' -f1 "$1.sha256"
  else
    sha256sum "$1" | cut -d' ' -f1
  fi
}

# marker_digest STEP: the sha256 of the step's record (its marker's lines without '#'), or none.
marker_digest() {
  if [ -f "$EXPDIR/.done/$1" ]; then
    { grep -v '^#' "$EXPDIR/.done/$1" || true; } | sha256sum | cut -d' ' -f1
  else
    echo none
  fi
}

# in_expdir PATH: a path inside EXPDIR written as $EXPDIR/..., so that a moved or copied EXPDIR
# keeps its records.
in_expdir() {
  case $1 in "$EXPDIR"|"$EXPDIR"/*) printf '%s\n' "\$EXPDIR${1#"$EXPDIR"}";; *) printf '%s\n' "$1";; esac
}

# step_record DEPS COMMAND...: the record of a step (see above).
step_record() {
  local deps=$1 a skip=0 d
  shift
  for a in "$@"; do
    if [ $skip = 1 ]; then skip=0; continue; fi
    case $a in --resume|--save_every) skip=1; continue;; --overwrite) continue;; esac
    [ "$a" = "$PYTHON" ] && a=python
    printf 'arg %s\n' "$(in_expdir "$a")"
  done
  for a in "$@"; do
    if [ "$a" != "$PYTHON" ] && [ -f "$a" ]; then printf 'input %s %s\n' "$(file_digest "$a")" "$(in_expdir "$a")"; fi
  done
  for d in $deps; do printf 'after %s %s\n' "$d" "$(marker_digest "$d")"; done
}

# record_diff OLD NEW: what changed between two records, on one line: "--max_steps 2 -> 3",
# "--dropout added", "--no-fsl removed", "input X changed", "train_cam redone".
record_diff() {
  OLD=$1 NEW=$2 awk '
  function parse(text, K, V, O,    n, L, i, t, cur, cnt, f, nk) {
    n = split(text, L, "\n"); cur = "(command)"; nk = 0
    for (i = 1; i <= n; i++) {
      if (substr(L[i], 1, 4) == "arg ") {
        t = substr(L[i], 5)
        if (t ~ /^--/) { cnt[t]++; cur = t "#" cnt[t]; K[cur] = 1; V[cur] = ""; O[++nk] = cur; continue }
        if (!(cur in K)) { K[cur] = 1; V[cur] = ""; O[++nk] = cur }
        V[cur] = V[cur] (V[cur] == "" ? "" : " ") t
      } else if (substr(L[i], 1, 6) == "input ") {         # input DIGEST PATH
        t = "input " substr(L[i], 72); K[t] = 1; V[t] = substr(L[i], 7, 64); O[++nk] = t
      } else if (substr(L[i], 1, 6) == "after ") {         # after STEP DIGEST
        split(L[i], f, " "); t = "after " f[2]; K[t] = 1; V[t] = f[3]; O[++nk] = t
      }
    }
    return nk
  }
  function show(k,    s) { s = k; sub(/#[0-9]+$/, "", s); return s }
  function say(m) { out = out (out == "" ? "" : "; ") m }
  BEGIN {
    no = parse(ENVIRON["OLD"], OK, OV, OO); nn = parse(ENVIRON["NEW"], NK, NV, NO)
    for (i = 1; i <= nn; i++) {
      k = NO[i]
      if (k ~ /^input /) { if (!(k in OK)) say(k " added"); else if (OV[k] != NV[k]) say(k " changed (sha256 " substr(OV[k], 1, 8) " -> " substr(NV[k], 1, 8) ")") }
      else if (k ~ /^after /) { if (!(k in OK) || OV[k] != NV[k]) say(substr(k, 7) " redone or changed") }
      else if (!(k in OK)) say(show(k) (NV[k] == "" ? "" : " " NV[k]) " added")
      else if (OV[k] != NV[k]) say(show(k) " " OV[k] " -> " NV[k])
    }
    for (i = 1; i <= no; i++) {
      k = OO[i]
      if (!(k in NK)) say(k ~ /^(input|after) / ? k " gone" : show(k) (OV[k] == "" ? "" : " " OV[k]) " removed")
    }
    if (length(out) > 400) out = substr(out, 1, 400) "..."
    print (out == "" ? "the record differs" : out)
  }'
}

# arg_after FLAG ARGS...: the value following FLAG in ARGS.
arg_after() {
  local flag=$1; shift
  while [ $# -gt 1 ]; do [ "$1" = "$flag" ] && { printf '%s\n' "$2"; return; }; shift; done
}

# log_tail LOG: its last 30 lines without progress-bar updates (carriage-return redraws).
log_tail() {
  tr '\r' '\n' < "$1" | grep -Ev '[0-9]+/[0-9]+ \[[0-9:]+<|^[[:space:]]*$' | tail -n 30 | cut -c1-400
}

# run_logged NAME COMMAND...: run COMMAND in its own process group with its output in
# $EXPDIR/logs/NAME.log; on failure print [FAIL], the log's last lines, and exit 1.
run_logged() {
  local name=$1 rc=0; shift
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
}

# write_marker NAME RECORD [COMMENT...]: the marker, atomically (via .started/).
write_marker() {
  local name=$1 record=$2 c tmp=$EXPDIR/.started/$1.marker
  shift 2
  { echo "$MARK_HEAD"; for c in "$@"; do echo "# $c"; done; printf '%s\n' "$record"; } > "$tmp"
  mv -f "$tmp" "$EXPDIR/.done/$name"
}

# step NAME STAGE DEPS COMMAND...: run COMMAND unless $EXPDIR/.done/NAME records the same command
# and inputs (DEPS: the upstream steps whose outputs it reads). A training resumes its
# unfinished run (<session>.state.pth newer than <session>.pth) only when that run had the same
# record; an inference step keeps the outputs of its own interrupted run only, and otherwise
# starts from empty output folders (and --overwrite).
step() {
  local name=$1 stage=$2 deps=$3; shift 3
  local marker=$EXPDIR/.done/$name started=$EXPDIR/.started/$name record why
  record=$(step_record "$deps" "$@")
  if [ -f "$marker" ]; then
    local head old
    head=$(head -n 1 "$marker")
    if [ "$head" = keep ]; then
      echo "[skip] $name (kept: $marker reads 'keep')"
      return 0
    elif [ "$head" != "$MARK_HEAD" ]; then
      why="marker of an earlier version, without a record of its command"
      if [ -z "$ON_CHANGE_SET" ]; then
        echo "$name: $marker was written by an earlier version and does not record its command; rerun with ON_CHANGE=redo to redo it and every step after it, or ON_CHANGE=keep to keep its results as those of the current command" >&2
        exit 2
      fi
    else
      old=$(grep -v '^#' "$marker" || true)
      if [ "$old" = "$record" ]; then
        echo "[skip] $name (done with the same command; log: $EXPDIR/logs/$name.log)"
        return 0
      fi
      why=$(record_diff "$old" "$record")
    fi
    case $ON_CHANGE in
      keep) write_marker "$name" "$record" "kept by ON_CHANGE=keep $(date -u +%Y-%m-%dT%H:%M:%SZ) ($why)"
            echo "[keep] $name ($why; its results kept by ON_CHANGE=keep)"
            return 0;;
      stop) echo "$name: its command or inputs changed since it ran ($why); ON_CHANGE=stop keeps its results: rerun with ON_CHANGE=redo to redo it and every step after it, or ON_CHANGE=keep to keep them" >&2
            exit 2;;
    esac
    echo "[redo] $name ($why)"
    rm -f "$marker"
    rm -f "$EXPDIR/.timing/"*".$name"
  fi
  # Resuming: the interrupted run of this step had the same record (or left none: an earlier
  # version's run, whose training state the training itself checks).
  local resume=0 extra=() session state flag out
  if [ ! -f "$started" ]; then resume=legacy
  elif [ "$(cat "$started")" = "$record" ]; then resume=1; fi
  case $name in
    train_*)
      session=$(arg_after --session_name "$@")
      state=$session.state.pth
      if [ "$resume" != 0 ] && [ -e "$state" ] && { [ ! -e "$session.pth" ] || [ "$state" -nt "$session.pth" ]; }; then
        extra=(--resume "$state")
      fi;;
    infer_*|crf_labels)
      # Not resuming: the old per-image outputs go (all of them, also those of ids no longer
      # listed) before the record is written, so a resumed run only ever keeps its own.
      if [ "$resume" != 1 ]; then
        extra=(--overwrite)
        for flag in --out_cam --out_crf --out_rw --out_pred --out_dir; do
          out=$(arg_after "$flag" "$@")
          case $out in "$EXPDIR"/?*) rm -rf -- "$out";; esac
        done
      fi;;
  esac
  printf '%s\n' "$record" > "$started"
  echo "[run ] $name  (log: $EXPDIR/logs/$name.log)"
  local t0=$SECONDS
  run_logged "$name" "$@" "${extra[@]}"
  echo $((SECONDS - t0)) > "$EXPDIR/.timing/$stage.$name"
  local ran
  ran=$(printf ' %q' "$@" "${extra[@]}")
  write_marker "$name" "$record" "finished $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - t0)) s" "ran:$ran"
  rm -f "$started"
}

# sweep_stale: remove the marker of every step made from an upstream step that has been redone
# (or removed) since (its `after` digest is no longer that step's), transitively, with the
# evaluation's json, so that neither a later run nor the results table uses it.
sweep_stale() {
  local again=1 m name d dig stale=()
  while [ $again = 1 ]; do
    again=0
    for m in "$EXPDIR"/.done/*; do
      [ -f "$m" ] || continue
      name=${m##*/}
      while read -r _ d dig; do
        if [ "$(marker_digest "$d")" != "$dig" ]; then
          stale+=("$name")
          rm -f "$m" "$EXPDIR/.timing/"*".$name"
          case $name in eval_*) rm -f "$EXPDIR/eval/${name#eval_}.json";; esac
          again=1
          break
        fi
      done < <(grep '^after ' "$m" || true)
    done
  done
  if [ ${#stale[@]} -gt 0 ]; then
    echo "[stale] ${stale[*]}: made from results redone since; markers removed, a run of their stages redoes them"
  fi
}

evaluate() {  # evaluate NAME PRED_DIR TYPE SPLIT
  local list gt
  list=$(layout_info "$DATASET" "$DATA_ROOT" "$4" "l.list_path()")
  gt=$(layout_info "$DATASET" "$DATA_ROOT" "$4" "os.path.dirname(l.gt_path(l.ids()[0]))")
  "$PYTHON" -m tools.evaluate --pred_dir "$2" --gt_dir "$gt" --list "$list" \
    --num_classes "$NUM_CLASSES" --type "$3" --eval_workers "${EVAL_WORKERS:-2}" \
    --title "$1" --out_json "$EXPDIR/eval/$1.json"
}

# The dataset: a runner may define prepare_data (the demo generates its own); then DATA_ROOT
# must exist, and its layout is read once here (a problem is one line, not a traceback).
if declare -F prepare_data > /dev/null; then prepare_data; fi
[ -d "$DATA_ROOT" ] || { echo "DATA_ROOT $DATA_ROOT does not exist: prepare the dataset first (config_voc.sh / config_coco.sh) or set DATA_ROOT to its folder" >&2; exit 2; }
DATA=(--dataset "$DATASET" --data_root "$DATA_ROOT")
# layout_info DATASET ROOT SPLIT EXPR: a property of the dataset layout (values via argv, never
# pasted into Python source, so any path works); an error is one line naming the dataset.
layout_info() {
  "$PYTHON" -c 'import os, sys
try:
    from lib.datasets import get_layout
    l = get_layout(*sys.argv[1:4])
    print(eval(sys.argv[4], {"l": l, "os": os}))
except Exception as e:
    sys.exit(f"DATA_ROOT {sys.argv[2]} (split {sys.argv[3]}): {type(e).__name__}: {e}")' "$@"
}
NUM_CLASSES=$(layout_info "$DATASET" "$DATA_ROOT" "$VAL_SPLIT" "l.num_classes") || exit 2

# The split whose inferred maps an evaluation split scores: val its own, the train GT split the
# maps of TRAIN_SPLIT (train_aug holds train).
inferred_split() { if [ "$1" = "$VAL_SPLIT" ]; then echo "$VAL_SPLIT"; else echo "$TRAIN_SPLIT"; fi; }

sweep_stale
P=$EXPDIR/plabels
if [[ " $STAGES " == *" 1 "* ]]; then
  step train_cam 1 "" launch stage1_cam.train_cam "${DATA[@]}" --train_list "$TRAIN_SPLIT" \
    --session_name "$EXPDIR/ckpts/cam" --weights "$WEIGHTS" --save_every "$SAVE_EVERY" "${CAM_TRAIN_EXTRA[@]}"
  for split in "$VAL_SPLIT" "$TRAIN_SPLIT"; do
    step "infer_cam_$split" 1 train_cam launch stage1_cam.infer_cam "${DATA[@]}" --infer_list "$split" \
      --weights "$EXPDIR/ckpts/cam.pth" --out_cam "$P/$split/cam" --out_crf "$P/$split/crf" \
      "${CAM_INFER_EXTRA[@]}"
  done
  for split in "$VAL_SPLIT" "$EVAL_TRAIN_SPLIT"; do
    src=$(inferred_split "$split")
    step "eval_cam_$split" 1 "infer_cam_$src" evaluate "cam_$split" "$P/$src/cam" cam "$split"
    step "eval_crf_$split" 1 "infer_cam_$src" evaluate "crf_$split" "$P/$src/crf/alpha_4.0" crf "$split"
  done
fi

if [[ " $STAGES " == *" 2 "* ]]; then
  step train_aff 2 "infer_cam_$TRAIN_SPLIT" launch stage2_aff.train_aff "${DATA[@]}" --train_list "$TRAIN_SPLIT" \
    --session_name "$EXPDIR/ckpts/aff" --weights "$WEIGHTS" --save_every "$SAVE_EVERY" \
    --la_crf_dir "$P/$TRAIN_SPLIT/crf/alpha_2.0" --ha_crf_dir "$P/$TRAIN_SPLIT/crf/alpha_4.0" \
    "${AFF_TRAIN_EXTRA[@]}"
  for split in "$VAL_SPLIT" "$TRAIN_SPLIT"; do
    step "infer_aff_$split" 2 "train_aff infer_cam_$split" launch stage2_aff.infer_aff "${DATA[@]}" --infer_list "$split" \
      --weights "$EXPDIR/ckpts/aff.pth" --cam_dir "$P/$split/cam" --out_rw "$P/$split/rw" \
      "${AFF_INFER_EXTRA[@]}"
  done
  for split in "$VAL_SPLIT" "$EVAL_TRAIN_SPLIT"; do
    step "eval_rw_$split" 2 "infer_aff_$(inferred_split "$split")" evaluate "rw_$split" \
      "$P/$(inferred_split "$split")/rw" png "$split"
  done
fi

if [[ " $STAGES " == *" 3 "* ]]; then
  SEG_GT=$P/$TRAIN_SPLIT/rw SEG_DEP=infer_aff_$TRAIN_SPLIT
  if [ "$SEG_LABELS" = crf ]; then
    SEG_GT=$P/$TRAIN_SPLIT/crf_labels/alpha_4.0 SEG_DEP=crf_labels
    step crf_labels 3 "infer_cam_$TRAIN_SPLIT" "$PYTHON" -m tools.crf_labels --crf_dir "$P/$TRAIN_SPLIT/crf/alpha_4.0" \
      --out_dir "$SEG_GT"
  fi
  step train_seg 3 "$SEG_DEP" launch stage3_seg.train_seg --config "$SEG_CONFIG" "${DATA[@]}" \
    --pseudo_gt "$SEG_GT" --session_name "$EXPDIR/ckpts/final" --weights "$WEIGHTS" --save_every "$SAVE_EVERY" \
    --set NUM_CLASSES=$((NUM_CLASSES + 1)) \
    "${SEG_TRAIN_EXTRA[@]}"
  final_splits=("$VAL_SPLIT")
  if [ "$FINAL_EVAL_TRAIN" = 1 ]; then final_splits+=("$EVAL_TRAIN_SPLIT"); fi
  for split in "${final_splits[@]}"; do
    step "infer_seg_$split" 3 train_seg launch stage3_seg.infer_seg --config "$SEG_CONFIG" "${DATA[@]}" \
      --weights "$EXPDIR/ckpts/final.pth" --infer_list "$split" \
      --out_pred "$EXPDIR/results/$split" "${SEG_INFER_EXTRA[@]}"
    step "eval_final_$split" 3 "infer_seg_$split" evaluate "final_$split" "$EXPDIR/results/$split" png "$split"
  done
fi

sweep_stale
"$PYTHON" -m tools.collect_results --expdir "$EXPDIR" --val_split "$VAL_SPLIT" --train_split "$EVAL_TRAIN_SPLIT" \
  ${TARGET_MIOU:+--target_miou "$TARGET_MIOU"}
