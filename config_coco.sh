#!/usr/bin/env bash
# Prepare MS COCO 2014 and/or 2017 for ICAM.
#
# Result (COCO_ROOT defaults to <repo>/data/coco, the runners' default DATA_ROOT):
#   $COCO_ROOT/{train2014,val2014,train2017,val2017}/          images as unzipped
#   $COCO_ROOT/annotations/instances_<split>.json
#   $COCO_ROOT/SegmentationClass/<split>/<12-digit id>.png     semantic labels (tools/data/process_coco.py)
#   $COCO_ROOT/ImageSets/<split>.txt                           12-digit ids
#   $COCO_ROOT/cls_labels_<split>.npz                          image-level labels
#
# Steps per year (each leaves a marker in $COCO_ROOT/.prep_markers and is skipped when rerun):
#   fetch + verify + extract annotations_trainval<Y>.zip, train<Y>.zip, val<Y>.zip,
#   then `python -m tools.data.process_coco` on train<Y> and val<Y>.
#
# Environment (flags in brackets):
#   DATA_ROOT [--data_root DIR]     parent of the default COCO_ROOT (default <repo>/data); a value
#                                   whose last component is "coco" is taken as COCO_ROOT itself
#   COCO_ROOT [--coco_root DIR]     the COCO folder (default $DATA_ROOT/coco)
#   YEARS [--years "2014 2017"]     which releases (default "2014 2017")
#   COCO_URL_BASE [--url_base U]    mirror root holding zips/<name>.zip and annotations/<name>.zip
#                                   (default http://images.cocodataset.org; file:// or a local path works)
#   COCO_<NAME>_URL                 override one archive, e.g. COCO_TRAIN2014_URL,
#                                   COCO_ANNOTATIONS_TRAINVAL2017_URL
#   COCO_<NAME>_MD5                 expected md5 of one archive ("skip" disables checking);
#                                   default: none known -> zip CRC integrity check
#   COCO_IMAGES=0 [--no_images]     annotations and labels only (images already elsewhere)
#   WORKERS [--workers N]           processes of tools.data.process_coco (default: min(8, nproc))
#   ARCHIVE_DIR                     where archives are kept (default $COCO_ROOT/archives)
#   DELETE_ARCHIVES=1               remove each archive after a successful extraction
#   LINK_LOCAL=1                    symlink local-path sources instead of copying them
#   FORCE=1 [--force]               redo every step (downloads are still resumed / reused)
#   PYTHON                          python interpreter (default: python)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CALLER_DIR=$PWD
PY=${PYTHON:-python}
# A relative interpreter path (PYTHON=.venv/bin/python) is the caller's, like every path here.
case $PY in /*|'') ;; */*) PY=$CALLER_DIR/$PY ;; esac

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --data_root|--data-root) DATA_ROOT=${2:?"$1 needs a value"}; shift 2 ;;
        --coco_root|--coco-root) COCO_ROOT=${2:?"$1 needs a value"}; shift 2 ;;
        --years) YEARS=${2:?"$1 needs a value"}; shift 2 ;;
        --url_base|--url-base) COCO_URL_BASE=${2:?"$1 needs a value"}; shift 2 ;;
        --workers) WORKERS=${2:?"$1 needs a value"}; shift 2 ;;
        --no_images|--no-images) COCO_IMAGES=0; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "config_coco.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

YEARS=${YEARS:-2014 2017}
COCO_URL_BASE=${COCO_URL_BASE:-http://images.cocodataset.org}
COCO_URL_BASE=${COCO_URL_BASE%/}
COCO_IMAGES=${COCO_IMAGES:-1}
FORCE=${FORCE:-0}
DELETE_ARCHIVES=${DELETE_ARCHIVES:-0}
n_cpu=$(nproc 2>/dev/null || echo 1)
WORKERS=${WORKERS:-$(( n_cpu < 8 ? n_cpu : 8 ))}

# Relative paths are taken relative to the caller's directory, before we cd to the repo.
DATA_ROOT=$(realpath -m "${DATA_ROOT:-$REPO/data}")
if [ -z "${COCO_ROOT:-}" ]; then
    case "${DATA_ROOT##*/}" in
        coco|COCO) COCO_ROOT=$DATA_ROOT ;;     # the runners' DATA_ROOT
        *) COCO_ROOT=$DATA_ROOT/coco ;;
    esac
fi
COCO_ROOT=$(realpath -m "$COCO_ROOT")
ARCHIVE_DIR=$(realpath -m "${ARCHIVE_DIR:-$COCO_ROOT/archives}")
MARKERS=$COCO_ROOT/.prep_markers
# shellcheck source=tools/runner/fetch_lib.sh
source "$REPO/tools/runner/fetch_lib.sh"
cd "$REPO"   # python -m tools.* needs the repo root
mkdir -p "$COCO_ROOT" "$ARCHIVE_DIR"
log "COCO root: $COCO_ROOT (years: $YEARS)"

# get_archive NAME SUBDIR CHECK: fetch, verify and extract $ARCHIVE_DIR/NAME.zip into COCO_ROOT;
# CHECK is the path (relative to COCO_ROOT) that must exist afterwards.
get_archive() {
    local name=$1 subdir=$2 check=$3 key url md5 zip url_var md5_var
    key=$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')
    if is_done "extract_$name" && [ -e "$COCO_ROOT/$check" ]; then
        log "skip: $name already extracted"
        return 0
    fi
    url_var=COCO_${key}_URL
    md5_var=COCO_${key}_MD5
    url=${!url_var:-$COCO_URL_BASE/$subdir/$name.zip}
    md5=${!md5_var:-}
    zip=$ARCHIVE_DIR/$name.zip
    fetch_verified "$name" "$url" "$zip" "$md5"
    extract "$name" "$zip" "$COCO_ROOT"
    [ -e "$COCO_ROOT/$check" ] || discard_archive "$name" "$zip" "$COCO_ROOT/$check missing after extracting $zip"
    mark_done "extract_$name"
    if [ "$DELETE_ARCHIVES" = 1 ]; then rm -f "$zip"; log "removed $zip"; fi
}

for year in $YEARS; do
    case "$year" in
        2014|2017) ;;
        *) die "unknown COCO year '$year' (expected 2014 and/or 2017)" ;;
    esac
    get_archive "annotations_trainval$year" annotations "annotations/instances_val$year.json"
    for split in "train$year" "val$year"; do
        [ -f "$COCO_ROOT/annotations/instances_$split.json" ] \
            || die "$COCO_ROOT/annotations/instances_$split.json missing (annotations_trainval$year.zip incomplete?)"
        if [ "$COCO_IMAGES" = 1 ]; then
            get_archive "$split" zips "$split"
        fi
    done
    for split in "train$year" "val$year"; do
        if is_done "labels_$split" && [ -f "$COCO_ROOT/cls_labels_$split.npz" ]; then
            log "skip: labels of $split already written"
            continue
        fi
        log "writing labels of $split"
        # process_coco itself keeps label PNGs of an interrupted run and writes the rest.
        "$PY" -m tools.data.process_coco --data_root "$COCO_ROOT" --split "$split" --workers "$WORKERS" \
            || die "tools.data.process_coco failed on $split"
        mark_done "labels_$split"
    done
done

log "done: $COCO_ROOT"
