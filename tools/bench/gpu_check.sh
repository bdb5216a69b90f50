#!/usr/bin/env bash
# One-shot check of a GPU machine, from a clean checkout, in at most 8 minutes:
#   1. the interpreter (PYTHON, or .venv, or make venv) and the GPU(s) seen by torch; where
#      pydensecrf / pycocotools are missing and nothing can be installed from the network, the
#      pydensecrf2 sdist and pycocotools wheel found in GPU_CHECK_WHEELS are installed into
#      $OUT/site (pip --no-build-isolation --target; PYTHONPATH); without them the CRF parts
#      are skipped
#   2. the GPU-relevant tests: tests/test_cuda.py (bf16 vs fp32 on CUDA, the random walk on the
#      GPU vs the CPU, a DDP smoke test of 2 processes: NCCL with 2+ GPUs, gloo on one),
#      tests/test_bench.py, tests/test_gpu_check.py
#   3. tools.bench.bench_pipeline at the paper's sizes (width 1.0; stage 1 and 2 crop 448 batch 8;
#      stage 3 crop 448 batch 10 = voc/config_voc2012.py; inference at 375x500), modes fp32,
#      bf16, bf16 + channels_last (peak memory after warm-up), and torch.compile for stage-1
#      training (last)
#   4. tools.bench.profile_step: where a stage-1 and a stage-3 training step spend their time
#   5. tools.bench.bench_crf (the CRF pool with 1, 2 and the `auto` workers of the machine's real
#      cores, lib/workers.py), tools.bench.bench_random_walk on the GPU and tools.bench.bench_fsl (the FSL tile size)
# and prints the tables, a summary, and one line per performance goal (tools.bench.gpu_goals):
#   goal: <text>: measured X vs goal Y: PASS | FAIL | NOT MEASURED
# Every part has its own time box; a part that runs out of time is reported and the script
# goes on. Without CUDA (or with GPU_CHECK_CPU=1) it runs the same parts at tiny sizes on the
# CPU in a few minutes (to know the script works; every goal is then NOT MEASURED).
#
#   bash tools/bench/gpu_check.sh                            # from the repository root or anywhere
#   PYTHON=python3 bash tools/bench/gpu_check.sh             # an existing interpreter, no installs
#   GPU_CHECK_CPU=1 bash tools/bench/gpu_check.sh            # reduced CPU mode
#
# Environment: PYTHON (an interpreter with the requirements; default: .venv via make venv),
# GPU_CHECK_BUDGET (seconds, default 480), GPU_CHECK_OUT (default exp/gpu_check/): the
# benchmark JSON files and the logs of every part go there; GPU_CHECK_WHEELS (default: the
# first of shared/wheels and wheels/ that exists): pydensecrf2-*.tar.gz / pycocotools-*.whl.
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-480}
OUT=${GPU_CHECK_OUT:-exp/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: PYTHONPATH entries and logs under it
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
STATUS=()

left() { echo $((BUDGET - (SECONDS - T0))); }
log() { printf '[gpu_check %4ds] %s\n' $((SECONDS - T0)) "$*"; }
# part NAME SECONDS CMD...: run CMD with a time box of min(SECONDS, time left - reserve), log to
# $OUT/NAME.log, record ok / FAIL / TIMEOUT / SKIP.
part() {
  local name=$1 box=$2 reserve=${RESERVE:-0}; shift 2
  local avail=$(( $(left) - reserve ))
  [ "$box" -gt "$avail" ] && box=$avail
  if [ "$box" -lt 10 ]; then
    STATUS+=("$name: SKIP (budget spent)"); log "$name: skipped, budget spent"; return 0
  fi
  log "$name (time box ${box}s, log $OUT/$name.log)"
  local t=$SECONDS rc=0
  timeout --kill-after=10 "$box" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local res=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then res=TIMEOUT; elif [ $rc -ne 0 ]; then res="FAIL (exit $rc)"; fi
  STATUS+=("$name: $res ($((SECONDS - t))s)")
  log "$name: $res"
  [ "$res" = ok ] || tail -n 15 "$OUT/$name.log"
  return 0
}

# 1. environment ---------------------------------------------------------------------------------
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif .venv/bin/python -c "import torch, pydensecrf.densecrf, pytest" 2>/dev/null; then
  PY=.venv/bin/python   # an existing environment: no reinstall
else
  part venv $(( $(left) - 120 )) make venv
  PY=.venv/bin/python
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  log "no usable Python with torch ($PY); see $OUT/venv.log"
  exit 1
fi
# pydensecrf / pycocotools from local files when the interpreter lacks them (no network)
need=()
"$PY" -c "import pydensecrf.densecrf" 2>/dev/null || need+=(pydensecrf)
"$PY" -c "import pycocotools.mask" 2>/dev/null || need+=(pycocotools)
if [ ${#need[@]} -gt 0 ]; then
  WHEELS=${GPU_CHECK_WHEELS:-}
  if [ -z "$WHEELS" ]; then
    for d in shared/wheels wheels; do [ -d "$d" ] && { WHEELS=$d; break; }; done
  fi
  files=()
  for n in "${need[@]}"; do
    case $n in
      pydensecrf) pat='pydensecrf*.tar.gz pydensecrf*.whl' ;;
      pycocotools) pat='pycocotools*.whl pycocotools*.tar.gz' ;;
    esac
    f=""
    if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
      for p in $pat; do f=$(ls "$WHEELS"/$p 2>/dev/null | head -n 1); [ -n "$f" ] && break; done
    fi
    if [ -n "$f" ]; then files+=("$f")
    else log "$n: missing, and no file for it in ${WHEELS:-shared/wheels or wheels/}"; fi
  done
  if [ ${#files[@]} -gt 0 ]; then
    SITE=$OUT/site
    log "installing ${files[*]} into $SITE (log $OUT/wheels.log)"
    "$PY" -m pip install --no-build-isolation --no-deps --no-index --target "$SITE" "${files[@]}" \
      > "$OUT/wheels.log" 2>&1 || log "pip install failed: see $OUT/wheels.log"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
HAVE_CRF=0
"$PY" -c "import pydensecrf.densecrf" 2>/dev/null && HAVE_CRF=1
[ $HAVE_CRF = 1 ] || log "pydensecrf unavailable: the CRF parts are skipped"
CUDA=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "${GPU_CHECK_CPU:-0}" = 1 ] || [ "$CUDA" = 0 ]; then
  MODE=cpu; DEVICE=cpu
  log "reduced CPU mode (GPU_CHECK_CPU=${GPU_CHECK_CPU:-0}, CUDA devices: $CUDA)"
else
  MODE=gpu; DEVICE=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    | sed 's/^/[gpu_check] GPU: /'
fi
"$PY" -c "import torch, os; print('[gpu_check] torch', torch.__version__, 'cuda', torch.version.cuda, \
'devices', torch.cuda.device_count(), 'cpus', os.cpu_count())"
# The real cores: `nproc` prints 1 under OMP_NUM_THREADS=1 (set above); the affinity mask not.
read -r CPUS CRF_AUTO < <("$PY" -c "from lib.workers import available_cores, split_cores as s; \
c = available_cores(); print(c, s(c)['infer_cam_crf'])")
log "cores (affinity mask): $CPUS; infer_cam's auto CRF pool: $CRF_AUTO workers"

# 2. tests ---------------------------------------------------------------------------------------
RESERVE=230 part tests 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda.py \
  tests/test_bench.py tests/test_gpu_check.py

# 3. the benchmark -------------------------------------------------------------------------------
if [ $MODE = gpu ]; then
  # --case_timeout bounds the timed steps of a case; each mode's warm-up (cuDNN autotuning)
  # has its own box
  BENCH=(--preset paper --device cuda --repeats 5 --case_timeout 60 --warmup_timeout 90)
  COMPILE_BOX=120
else
  # stage 2 needs maps of more than 10 cells (> 80 px) for its radius-5 pairs to exist
  BENCH=(--preset demo --backbone_width 0.0625 --cam_crop 48 --cam_batch 4 --aff_crop 88 --aff_batch 2
         --seg_crop 48 --seg_batch 4 --infer_size 88 96 --device cpu --repeats 2 --case_timeout 60
         --warmup_timeout 90)
  COMPILE_BOX=0
fi
RESERVE=120 part bench_pipeline 240 "$PY" -m tools.bench.bench_pipeline "${BENCH[@]}" \
  --modes fp32 bf16 bf16_cl --json "$OUT/bench_pipeline.json"

# 4. the profiler table of a stage-1 and a stage-3 step ------------------------------------------
if [ $MODE = gpu ]; then
  PROF=(--preset paper --device cuda --mode bf16_cl)
else
  PROF=(--preset tiny --device cpu --mode fp32)
fi
RESERVE=90 part profile_step 60 "$PY" -m tools.bench.profile_step "${PROF[@]}" --row_limit 20 \
  --markdown "$OUT/profile_step.md" --json "$OUT/profile_step.json"

# 5. CPU-bound steps -----------------------------------------------------------------------------
if [ $HAVE_CRF = 0 ]; then
  STATUS+=("bench_crf: SKIP (no pydensecrf)")
elif [ $MODE = gpu ]; then
  W=$CRF_AUTO; WS=(1 2); [ "$W" -gt 2 ] && WS+=("$W")
  RESERVE=60 part bench_crf 70 "$PY" -m tools.bench.bench_crf --crf_workers "${WS[@]}" \
    --images $((2 * W > 8 ? 2 * W : 8)) --cases stage1 final --json "$OUT/bench_crf.json"
else
  RESERVE=60 part bench_crf 60 "$PY" -m tools.bench.bench_crf --crf_workers 1 2 --images 2 \
    --size 120 160 --cases stage1 --json "$OUT/bench_crf.json"
fi
if [ $MODE = gpu ]; then
  RESERVE=50 part bench_random_walk 30 "$PY" -m tools.bench.bench_random_walk --device cuda --repeats 3
else
  RESERVE=50 part bench_random_walk 30 "$PY" -m tools.bench.bench_random_walk --device cpu --repeats 1 \
    --height 24 --width 32 --dim 64 --channels 3
fi
# the FSL's tile size B: the CUDA default (2^25 entries, B = 2048 at batch 8) is chosen by this table
if [ $MODE = gpu ]; then
  RESERVE=40 part bench_fsl 40 "$PY" -m tools.bench.bench_fsl --device cuda --sizes 56 --repeats 3 \
    --blocks 0 512 1024 3136
else
  RESERVE=40 part bench_fsl 30 "$PY" -m tools.bench.bench_fsl --device cpu --sizes 16 --batch 2 --repeats 1 \
    --blocks 0 64
fi
if [ "$COMPILE_BOX" -gt 0 ]; then  # last: a slow compile costs only itself
  RESERVE=5 part bench_compile "$COMPILE_BOX" "$PY" -m tools.bench.bench_pipeline "${BENCH[@]}" \
    --stages cam --kinds train --modes fp32 compile --compile_timeout $((COMPILE_BOX - 30)) \
    --json "$OUT/bench_compile.json"
fi

# summary ----------------------------------------------------------------------------------------
echo
echo "==================== gpu_check ($MODE, $((SECONDS - T0)) s of ${BUDGET} s) ===================="
for s in "${STATUS[@]}"; do echo "  $s"; done
echo
for f in bench_pipeline bench_compile; do
  [ -s "$OUT/$f.log" ] && sed -n '/^$/,$p' "$OUT/$f.log"
done
[ -s "$OUT/bench_crf.log" ] && sed -n '/^$/,$p' "$OUT/bench_crf.log"
[ -s "$OUT/bench_random_walk.log" ] && cat "$OUT/bench_random_walk.log"
[ -s "$OUT/bench_fsl.log" ] && cat "$OUT/bench_fsl.log"
[ -s "$OUT/profile_step.md" ] && { echo; sed -n '1,/^$/p' "$OUT/profile_step.md"; }
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for name in ("bench_pipeline.json", "bench_compile.json"):
    if (out / name).is_file():
        rows += json.loads((out / name).read_text())["rows"]
get = lambda mode: next((r for r in rows if r["kind"] == "train" and r["stage"] == "cam"
                         and r["mode"] == mode and r.get("img_per_s")), None)
fp32, fast = get("fp32"), get("bf16_cl")
if fp32 and fast:
    ratio = fast["img_per_s"] / fp32["img_per_s"]
    print(f"\nstage-1 training {fp32.get('shape')}: fp32 {fp32['img_per_s']:.1f} img/s "
          f"(peak {fp32.get('peak_mib') or 0:.0f} MiB), bf16+channels_last "
          f"{fast['img_per_s']:.1f} img/s (peak {fast.get('peak_mib') or 0:.0f} MiB): "
          f"{ratio:.2f}x (goal >= 2x on the GPU)")
bad = [f"{r['kind']}/{r['stage']}/{r['mode']}" for r in rows if r.get("check") == "FAIL"]
print("tolerance checks: " + ("all passed" if not bad else "FAILED " + ", ".join(bad)))
EOF
if [ $MODE = gpu ] && [ -s "$OUT/bench_pipeline.json" ]; then
  echo; "$PY" -m tools.bench.time_budget --bench "$OUT" --cores "$CPUS" --markdown | sed -n '1,14p'
fi
echo
"$PY" -m tools.bench.gpu_goals "$OUT" --cores "$CPUS"
for s in "${STATUS[@]}"; do
  case $s in *FAIL*) exit 1 ;; esac
done
exit 0
