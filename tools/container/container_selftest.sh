#!/bin/sh
# Run inside a built image by tools/container/container_check.sh (a RUN step of a test stage, since
# `podman run` cannot start containers in the sandbox this check was written on). ENTRY holds the
# image's own entry point as shell words (from its config), so each check goes through the
# image's argument logic and environment exactly as `docker run IMAGE ARGS` / `apptainer run
# icam.sif ARGS` would. Tiny demo settings (tests/test_pipeline.py's): the plumbing, not accuracy.
set -eu
: "${ENTRY:?ENTRY (the image entry point as shell words) is not set}"
entry() { eval "set -- $ENTRY \"\$@\""; "$@"; }
fail() { echo "container selftest: FAIL: $*" >&2; exit 1; }
header() { sed -n 2p "$1" | sed 's/^# *//'; }   # a runner's first help line

echo "== environment and import check, through a runner given by absolute path"
cat > /tmp/icam-env.sh <<'SH'
echo "python: $(command -v python)  PYTHONPATH=$PYTHONPATH  PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-}"
python -c "import torch, torchvision, cv2, scipy, pydensecrf, pycocotools, PIL, tqdm; print('import check: torch', torch.__version__, 'torchvision', torchvision.__version__, 'cv2', cv2.__version__)"
echo "args: $*"
SH
out=$(entry /tmp/icam-env.sh a "b c") || fail "the import check"
echo "$out"
echo "$out" | grep -q "^python: /opt/venv/bin/python  PYTHONPATH=/opt/icam  PYTHONDONTWRITEBYTECODE=1" || fail "environment"
echo "$out" | grep -q "^args: a b c$" || fail "arguments after an absolute runner"

echo "== default runner (run_all_voc.sh) with an extra argument: --help"
out=$(entry --help) || fail "default runner --help"
echo "$out" | head -n 1
[ "$(echo "$out" | head -n 1)" = "$(header /opt/icam/run_all_voc.sh)" ] || fail "default runner is not run_all_voc.sh"

echo "== a runner named relative to /opt/icam: run_all_coco.sh --help"
out=$(cd / && entry run_all_coco.sh --help) || fail "run_all_coco.sh --help"
echo "$out" | head -n 1
[ "$(echo "$out" | head -n 1)" = "$(header /opt/icam/run_all_coco.sh)" ] || fail "run_all_coco.sh was not run"

echo "== extra arguments reach the named runner: run_all_demo.sh --bogus exits 2"
rc=0; err=$(entry run_all_demo.sh --bogus 2>&1) || rc=$?
echo "$err"
[ "$rc" = 2 ] && echo "$err" | grep -q "unknown argument '--bogus'" || fail "run_all_demo.sh --bogus: exit $rc"

echo "== the three-stage demo runner, settings from the environment (tiny)"
rm -rf /tmp/icam-demo
EXPDIR=/tmp/icam-demo DEMO_NUM_TRAIN=8 DEMO_NUM_VAL=4 DEMO_SIZE=64 DEMO_WIDTH=0.0625 \
  DEMO_CAM_STEPS=2 DEMO_AFF_STEPS=2 DEMO_SEG_STEPS=2 DEMO_BATCH=2 DEMO_WEIGHTS=none \
  OMP_NUM_THREADS=1 EVAL_WORKERS=1 entry run_all_demo.sh || fail "run_all_demo.sh"
[ -s /tmp/icam-demo/results.json ] && [ -s /tmp/icam-demo/ckpts/final.pth ] || fail "demo outputs missing"
[ -z "$(find /opt/icam -newer /tmp/icam-env.sh -not -path '/opt/icam' -print -quit)" ] \
  || fail "the run wrote into /opt/icam (read-only in a SIF): $(find /opt/icam -newer /tmp/icam-env.sh | head -3)"
rm -rf /tmp/icam-demo /tmp/icam-env.sh
echo "container selftest: OK"
