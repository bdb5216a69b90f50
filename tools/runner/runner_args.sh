# Sourced first by run_all_*.sh with the runner's arguments, from the caller's directory: makes
# the caller's relative paths absolute (EXPDIR, DATA_ROOT, WEIGHTS, DEMO_WEIGHTS, SEG_CONFIG,
# and PYTHON when it names a file), then changes to the repository root, where the steps run.
# Settings are environment variables, so the only argument is -h/--help (the runner's header and
# the pipeline's variables, exit 0); anything else is an error (exit 2) before any work starts.
# Also picks the interpreter: PYTHON when set, else the repository's .venv (`make venv`) when it
# exists, else `python` (tools/runner/pipeline.sh); a system python without the requirements would fail
# at the first step with "No module named ...".
CALLER_DIR=$PWD
RUNNER_CMD="bash $(basename "$0") from $CALLER_DIR"
# caller_path VAR: VAR's value, when set, relative and a path (not 'none'; PYTHON: only with a
# slash, else a command looked up in PATH), made absolute against the caller's directory.
caller_path() {
  local v=${!1:-}
  case $v in ''|/*|none) return 0;; esac
  if [ "$1" = PYTHON ]; then case $v in */*) ;; *) return 0;; esac; fi
  printf -v "$1" '%s' "$(realpath -ms "$CALLER_DIR/$v" 2> /dev/null || echo "$CALLER_DIR/$v")"
}
for _v in EXPDIR DATA_ROOT WEIGHTS DEMO_WEIGHTS SEG_CONFIG PYTHON; do caller_path "$_v"; done
cd "$(dirname "$0")"
if [ $# -gt 0 ]; then
  case $1 in
    -h|--help)
      # The comment block under the shebang of the runner, then that of tools/runner/pipeline.sh.
      for f in "$(basename "$0")" tools/runner/pipeline.sh; do
        awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$f"
        echo
      done
      exit 0;;
    *)
      echo "$(basename "$0"): unknown argument '$1'; settings are environment variables (see $(basename "$0") --help)" >&2
      exit 2;;
  esac
fi
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
  export PYTHON="$PWD/.venv/bin/python"
fi

# check_var NAME KIND: stop (exit 2, one line) unless $NAME, when set and not empty, is KIND:
# count (an integer >= 0), positive (an integer >= 1), number (a real >= 0) or fraction (a real
# in 0..1; a value in (1, 100] gets the hint that it looks like a percentage). The runners check
# every variable before the first step, so a typo fails at once, not hours later.
check_var() {
  local name=$1 kind=$2 v=${!1:-} what hint=
  [ -n "$v" ] || return 0
  local real='^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$'
  case $kind in
    count) [[ $v =~ ^[0-9]+$ ]] && return 0; what="a whole number (0 or more)";;
    positive) [[ $v =~ ^[0-9]+$ ]] && [[ $v =~ [1-9] ]] && return 0; what="a positive integer";;
    number) [[ $v =~ $real ]] && return 0; what="a number (0 or more)";;
    fraction)
      what="a fraction in 0..1"
      if [[ $v =~ $real ]]; then
        awk "BEGIN { exit !($v <= 1) }" && return 0
        if awk "BEGIN { exit !($v <= 100) }"; then
          hint=" (it looks like a percentage: write $(awk "BEGIN { print $v / 100 }") for $v %)"
        fi
      fi;;
  esac
  echo "$name must be $what, not '$v'$hint" >&2
  exit 2
}
