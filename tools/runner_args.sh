# Sourced first by run_all_*.sh (from the repository root) with the runner's arguments: settings
# are environment variables, so the only argument is -h/--help (the runner's header and the
# pipeline's variables, exit 0); anything else is an error (exit 2) before any work starts.
# Also picks the interpreter: PYTHON when set, else the repository's .venv (`make venv`) when it
# exists, else `python` (tools/pipeline.sh); a system python without the requirements would fail
# at the first step with "No module named ...".
if [ $# -gt 0 ]; then
  case $1 in
    -h|--help)
      # The comment block under the shebang of the runner, then that of tools/pipeline.sh.
      for f in "$0" tools/pipeline.sh; do
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
