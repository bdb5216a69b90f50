#!/usr/bin/env bash
# Build both container recipes (Dockerfile, pytorch.def) with podman on a machine without registry
# access, and run each image's checks: `make container-check`. Needs root (apt-get, debootstrap,
# podman); about 20 minutes on a fresh 2-core machine, a few minutes once the base is cached.
#   1. installs podman and debootstrap when missing (apt-get);
#   2. bootstraps a Debian bookworm minbase from the Debian mirror apt uses here (DEBIAN_MIRROR to
#      override) and imports it as localhost/debian-base:bookworm, once (later runs reuse it);
#   3. builds the Dockerfile with --build-arg BASE_IMAGE=<that base> TORCH_INDEX=<local>, and
#      pytorch.def through tools/container/def_to_dockerfile.py (its sections run unchanged); pip inside the
#      builds uses this machine's pip configuration (`pip config list`): its local wheel folders,
#      indexes and constraints are mounted read-only and its CA bundle is used; TORCH_INDEX is the
#      local index holding torch and torchvision (PyPI when there is none);
#   4. runs tools/container/container_selftest.sh in each image through the image's own entry point (RUN
#      steps of a test stage: `podman run` cannot set rlimits in some sandboxes): the import check,
#      the default runner, a named runner, extra arguments, and a tiny run_all_demo.sh configured by
#      environment variables, whose results table it prints;
#   5. prints build times and image sizes, then "container check: OK".
# What this cannot cover (the CUDA base, Python 3.12, CUDA wheels): docs/DATA.md#containers-and-clusters.
# Variables: DEBIAN_MIRROR, TORCH_INDEX, CONTAINER_CACHE (default /var/cache/icam-container: build
# logs, the generated Dockerfile), NICE (default 10), MIN_FREE_GB (25).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=${CONTAINER_CACHE:-/var/cache/icam-container}
BASE=localhost/debian-base:bookworm
NICE=${NICE:-10}
PY=python3
say() { echo "[container-check] $*"; }
die() { echo "container_check.sh: $*" >&2; exit 1; }
now() { date +%s; }
[ "$(id -u)" = 0 ] || die "needs root (apt-get, debootstrap, podman build)"
mkdir -p "$CACHE"

# 1. tools
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing podman and debootstrap (apt-get)"
  t=$(now)
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap > "$CACHE/apt.log" 2>&1 \
    || { tail -20 "$CACHE/apt.log" >&2; die "apt-get install podman debootstrap failed ($CACHE/apt.log)"; }
  say "installed in $(( $(now) - t )) s"
fi

# Two images of ~7 GB (CUDA wheels), their build layers and the base: ask for 25 GB up front.
store=$(podman info --format '{{.Store.GraphRoot}}')
mkdir -p "$store"
free_gb=$(df -Pk "$store" | awk 'NR == 2 { print int($4 / 1048576) }')
[ "$free_gb" -ge "${MIN_FREE_GB:-25}" ] || die "$store: ${free_gb} GB free, the two images need about 25 GB (MIN_FREE_GB)"

# 2. the base image, once
debian_mirror() {
  # The first Debian archive URI in apt's sources (one-line .list or deb822 .sources format)
  # that is not the security archive.
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }
           /^URIs:/ { for (i = 2; i <= NF; i++) print $i }' \
    | grep -E '/debian/?$' | head -n 1 || true   # none found: the caller says so
}
if podman image exists "$BASE"; then
  say "base image $BASE: cached"
else
  mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
  [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list(.d); set DEBIAN_MIRROR"
  say "bootstrapping Debian bookworm (minbase) from $mirror"
  t=$(now)
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  nice -n "$NICE" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed ($CACHE/debootstrap.log)"; }
  tar -C "$rootfs" -c . | podman import --quiet - "$BASE" > /dev/null
  rm -rf "$rootfs"
  say "base image $BASE imported in $(( $(now) - t )) s"
fi

# 3. pip configuration for the builds, from this machine's
pipconf=$CACHE/pip
rm -rf "$pipconf" && mkdir -p "$pipconf"
VOLUMES=()
mount_ro() { [ -e "$1" ] && VOLUMES+=(--volume "$1:$1:ro"); return 0; }
declare -A CONF=()
while IFS= read -r line; do
  key=${line%%=*}; val=${line#*=}; val=${val#\'}; val=${val%\'}
  case $key in
    global.*|:env:.*) CONF[${key#*.}]=$val ;;
  esac
done < <($PY -m pip config list 2>/dev/null || true)
{
  echo "[global]"
  if [ -n "${CONF[cert]:-}" ] && [ -f "${CONF[cert]}" ]; then
    cp "${CONF[cert]}" "$pipconf/ca.crt"; echo "cert = /etc/icam-pip/ca.crt"
  fi
  # PyPI (or the configured index) also as an extra index: TORCH_INDEX replaces the index in the
  # torch step, and a local index may lack some of torch's dependencies (cuda-bindings).
  CONF[extra-index-url]="${CONF[extra-index-url]:-} ${CONF[index-url]:-https://pypi.org/simple}"
  for key in find-links index-url extra-index-url; do
    [ -n "${CONF[$key]:-}" ] || continue
    echo "$key = ${CONF[$key]# }"
    for loc in ${CONF[$key]}; do
      path=${loc#file://}
      [ "${path:0:1}" = / ] || continue
      # a PEP 503 index links to ../../files: mount the folder above .../simple
      case $key in *index-url) mount_ro "$(dirname "$path")" ;; *) mount_ro "$path" ;; esac
    done
  done
  echo "constraint = /etc/icam-pip/constraints.txt"
} > "$pipconf/pip.conf"
: > "$pipconf/constraints.txt"
if [ -n "${CONF[constraint]:-}" ]; then
  for f in ${CONF[constraint]}; do [ -f "$f" ] && cat "$f" >> "$pipconf/constraints.txt"; done
fi
# torch and torchvision from the local index that holds torch, when there is one: the CPU torch
# wheel some machines also keep cannot be used, since torchvision's wheels there are built against
# CUDA torch (libtorch_cuda.so) and fail on import with "operator torchvision::nms does not exist".
local_index=
for loc in ${CONF[index-url]:-} ${CONF[extra-index-url]:-}; do
  [ -d "${loc#file://}/torch" ] && [ -d "${loc#file://}/torchvision" ] && { local_index=$loc; break; }
done
TORCH_INDEX=${TORCH_INDEX:-${local_index:-https://pypi.org/simple}}
say "torch index for the builds: $TORCH_INDEX"
VOLUMES+=(--volume "$pipconf/pip.conf:/etc/pip.conf:ro" --volume "$pipconf:/etc/icam-pip:ro")

build() {  # TAG LOG ARGS... ; sets SECONDS_TAKEN
  local tag=$1 log=$2; shift 2
  local t; t=$(now)
  if ! nice -n "$NICE" podman build --isolation chroot --layers -t "$tag" "$@" > "$log" 2>&1; then
    tail -40 "$log" >&2; die "podman build $tag failed (log: $log)"
  fi
  SECONDS_TAKEN=$(( $(now) - t ))
}
size_mb() { podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f", $1 / 1e6 }'; }

# pytorch.def -> a Dockerfile with the same build steps
$PY -m tools.container.def_to_dockerfile pytorch.def > "$CACHE/Dockerfile.def.tmp"
mv "$CACHE/Dockerfile.def.tmp" "$CACHE/Dockerfile.def"
testctx=$CACHE/test-context
rm -rf "$testctx" && mkdir -p "$testctx" && cp tools/container/container_selftest.sh "$testctx/"

declare -A BUILD_S=() SIZE_MB=()
for recipe in Dockerfile pytorch.def; do
  case $recipe in
    Dockerfile) tag=localhost/icam:check-dockerfile; file=Dockerfile ;;
    pytorch.def) tag=localhost/icam:check-def; file=$CACHE/Dockerfile.def ;;
  esac
  say "building $recipe -> $tag (log: $CACHE/build-${tag##*:}.log)"
  build "$tag" "$CACHE/build-${tag##*:}.log" -f "$file" --build-arg BASE_IMAGE="$BASE" \
    --build-arg TORCH_INDEX="$TORCH_INDEX" "${VOLUMES[@]}" "$ROOT"
  BUILD_S[$recipe]=$SECONDS_TAKEN; SIZE_MB[$recipe]=$(size_mb "$tag")
  say "built $recipe in ${BUILD_S[$recipe]} s; image size ${SIZE_MB[$recipe]} MB"

  # 4. the checks, through the image's own entry point
  entry=$(podman image inspect --format '{{json .Config.Entrypoint}}' "$tag")
  words=$($PY -c 'import json, shlex, sys; print(shlex.join(json.loads(sys.argv[1])))' "$entry")
  say "checks in $tag through its entry point: $words"
  t=$(now)
  if ! nice -n "$NICE" podman build --isolation chroot --no-cache -t "$tag-test" \
      -f "$ROOT/tools/container/container_check.Dockerfile" --build-arg IMAGE="$tag" --build-arg ENTRY="$words" \
      "$testctx" 2>&1 | tee "$CACHE/test-${tag##*:}.log" | grep -v -E '^(STEP|COMMIT|-->|Getting image|Copying|Writing manifest|Storing|Successfully tagged|[0-9a-f]{64}$)'; then
    die "the checks failed in $tag (log: $CACHE/test-${tag##*:}.log)"
  fi
  grep -q "^container selftest: OK" "$CACHE/test-${tag##*:}.log" || die "the checks did not finish in $tag"
  podman rmi "$tag-test" > /dev/null 2>&1 || true
  say "checks in $tag: OK in $(( $(now) - t )) s"
done

# 5. summary
echo
printf '%-12s %14s %14s\n' recipe "build (s)" "size (MB)"
for recipe in Dockerfile pytorch.def; do
  printf '%-12s %14s %14s\n' "$recipe" "${BUILD_S[$recipe]}" "${SIZE_MB[$recipe]}"
done
echo "container check: OK"
