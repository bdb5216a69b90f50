#!/usr/bin/env bash
# Prepare PASCAL VOC 2012 + SBD augmented labels for ICAM.
#
# Result (DATA_ROOT defaults to <repo>/data):
#   $DATA_ROOT/VOCdevkit/VOC2012/{JPEGImages,Annotations,SegmentationClass,SegmentationClassAug,
#                                 ImageSets/Segmentation/{train,val,train_aug}.txt,cls_labels.npz}
#
# Steps (each leaves a marker in $DATA_ROOT/.prep_markers and is skipped when rerun):
#   1. fetch + verify VOCtrainval_11-May-2012.tar (md5), extract
#   2. fetch + verify SegmentationClassAug (zip or tar; integrity or SBD_AUG_MD5), extract
#   3. ImageSets/Segmentation/train_aug.txt = SegmentationClassAug ids - val ids (tools/data/make_train_aug.py)
#   4. cls_labels.npz from the XML annotations (tools/data/make_cls_labels.py)
#   5. VOC 2012 test images (optional; the server needs a login, failure is only a warning)
#
# Environment (flags in brackets):
#   DATA_ROOT [--data_root DIR]     where everything goes (default <repo>/data); a value ending in
#                                   VOCdevkit/VOC2012 (the runners' DATA_ROOT) means its grandparent
#   VOC_URL [--voc_url U]           VOC trainval tar (URL, file:// URL or local path)
#   VOC_MD5                         expected md5 of it; "skip" disables the check (the archive is
#                                   then not marked verified: a later run checks it again)
#   SBD_AUG_URL [--sbd_aug_url U]   SegmentationClassAug archive; SBD_AUG_MD5 as above
#                                   (default: no md5 known -> archive integrity check)
#   VOC_TEST_URL [--voc_test_url U] VOC2012test.tar; VOC_TEST_MD5 as above
#   VOC_TEST=0 [--no_test]          do not fetch the test images
#   ARCHIVE_DIR                     where archives are kept (default $DATA_ROOT/archives)
#   DELETE_ARCHIVES=1               remove each archive after a successful extraction
#   LINK_LOCAL=1                    symlink local-path sources instead of copying them
#   TRAIN_AUG_EXPECT=N              fail unless train_aug has N ids (10582 for the full data)
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
        --voc_url|--voc-url) VOC_URL=${2:?"$1 needs a value"}; shift 2 ;;
        --sbd_aug_url|--sbd-aug-url) SBD_AUG_URL=${2:?"$1 needs a value"}; shift 2 ;;
        --voc_test_url|--voc-test-url) VOC_TEST_URL=${2:?"$1 needs a value"}; shift 2 ;;
        --no_test|--no-test) VOC_TEST=0; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "config_voc.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

VOC_URL=${VOC_URL:-http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar}
VOC_MD5=${VOC_MD5-6cd6e144f989b92b3379bac3b3de84fd}
SBD_AUG_URL=${SBD_AUG_URL:-https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1}
SBD_AUG_MD5=${SBD_AUG_MD5:-}
VOC_TEST_URL=${VOC_TEST_URL:-http://host.robots.ox.ac.uk:8080/eval/downloads/VOC2012test.tar}
VOC_TEST_MD5=${VOC_TEST_MD5:-}
VOC_TEST=${VOC_TEST:-1}
FORCE=${FORCE:-0}
DELETE_ARCHIVES=${DELETE_ARCHIVES:-0}
TRAIN_AUG_EXPECT=${TRAIN_AUG_EXPECT:-}

# Relative paths are taken relative to the caller's directory, before we cd to the repo.
DATA_ROOT=$(realpath -m "${DATA_ROOT:-$REPO/data}")
# The runners call the VOC2012 folder itself DATA_ROOT; accept that value too.
case "$DATA_ROOT" in
    */VOCdevkit/VOC2012) DATA_ROOT=${DATA_ROOT%/VOCdevkit/VOC2012} ;;
esac
ARCHIVE_DIR=$(realpath -m "${ARCHIVE_DIR:-$DATA_ROOT/archives}")
MARKERS=$DATA_ROOT/.prep_markers
VOC=$DATA_ROOT/VOCdevkit/VOC2012
# shellcheck source=tools/runner/fetch_lib.sh
source "$REPO/tools/runner/fetch_lib.sh"
cd "$REPO"   # python -m tools.* needs the repo root
mkdir -p "$DATA_ROOT" "$ARCHIVE_DIR"
log "data root: $DATA_ROOT"

# Archive names are fixed (not taken from the URL) so that markers survive a change of mirror.
VOC_TAR=$ARCHIVE_DIR/VOCtrainval_11-May-2012.tar
SBD_ARCHIVE=$ARCHIVE_DIR/SegmentationClassAug.archive
TEST_TAR=$ARCHIVE_DIR/VOC2012test.tar

maybe_delete() { if [ "$DELETE_ARCHIVES" = 1 ]; then rm -f "$1"; log "removed $1"; fi; }

require_layout() {
    local p
    for p in JPEGImages Annotations SegmentationClass ImageSets/Segmentation/train.txt \
             ImageSets/Segmentation/val.txt; do
        [ -e "$VOC/$p" ] || discard_archive voc_trainval "$VOC_TAR" "$VOC/$p missing after extracting $VOC_TAR: not a VOC 2012 trainval archive"
    done
}

# 1. VOC 2012 trainval -------------------------------------------------------------------------
if is_done voc_trainval && [ -d "$VOC/JPEGImages" ]; then
    log "skip: VOC 2012 trainval already extracted"
else
    fetch_verified voc_trainval "$VOC_URL" "$VOC_TAR" "$VOC_MD5"
    extract voc_trainval "$VOC_TAR" "$DATA_ROOT"
    require_layout
    mark_done voc_trainval
    maybe_delete "$VOC_TAR"
fi

# 2. SBD SegmentationClassAug ------------------------------------------------------------------
if is_done sbd_aug && [ -d "$VOC/SegmentationClassAug" ]; then
    log "skip: SegmentationClassAug already in place"
else
    fetch_verified sbd_aug "$SBD_AUG_URL" "$SBD_ARCHIVE" "$SBD_AUG_MD5"
    tmp=$DATA_ROOT/.sbd_extract
    rm -rf "$tmp"
    extract sbd_aug "$SBD_ARCHIVE" "$tmp"
    # The zip holds SegmentationClassAug/*.png (plus a __MACOSX/ copy of resource forks);
    # accept that folder at any depth, or PNGs at the top of the archive.
    src=$(find "$tmp" -type d -name SegmentationClassAug -not -path '*/__MACOSX*' -print -quit)
    [ -n "$src" ] || src=$tmp
    find "$src" -maxdepth 1 -name '._*' -delete
    n=$(find "$src" -maxdepth 1 -name '*.png' | wc -l)
    [ "$n" -gt 0 ] || discard_archive sbd_aug "$SBD_ARCHIVE" "$SBD_ARCHIVE contains no SegmentationClassAug/*.png"
    rm -rf "$VOC/SegmentationClassAug"
    mv "$src" "$VOC/SegmentationClassAug" || die "cannot move $src to $VOC/SegmentationClassAug"
    rm -rf "$tmp"
    log "SegmentationClassAug: $n label PNGs"
    mark_done sbd_aug
    maybe_delete "$SBD_ARCHIVE"
fi

# 3. train_aug.txt -------------------------------------------------------------------------------
if is_done train_aug && [ -f "$VOC/ImageSets/Segmentation/train_aug.txt" ]; then
    log "skip: train_aug.txt already built"
else
    "$PY" -m tools.data.make_train_aug --data_root "$VOC" ${TRAIN_AUG_EXPECT:+--expect "$TRAIN_AUG_EXPECT"} \
        || die "building train_aug.txt failed"
    mark_done train_aug
fi

# 4. image-level labels --------------------------------------------------------------------------
if is_done cls_labels && [ -f "$VOC/cls_labels.npz" ]; then
    log "skip: cls_labels.npz already built"
else
    "$PY" -m tools.data.make_cls_labels --data_root "$VOC" --out "$VOC/cls_labels.npz" \
        || die "building cls_labels.npz failed"
    mark_done cls_labels
fi

# 5. VOC 2012 test images (optional) -------------------------------------------------------------
if [ "$VOC_TEST" != 1 ]; then
    log "skip: VOC 2012 test images not requested (VOC_TEST=$VOC_TEST)"
elif is_done voc_test && [ -f "$VOC/ImageSets/Segmentation/test.txt" ]; then
    log "skip: VOC 2012 test images already extracted"
else
    # A subshell, so that a failure (the server wants a login) is reported but not fatal:
    # no pipeline stage needs the test images.
    if (
        fetch_verified voc_test "$VOC_TEST_URL" "$TEST_TAR" "$VOC_TEST_MD5"
        # --skip-old-files: never replace a trainval file (lists, annotations) by the test copy.
        extract voc_test "$TEST_TAR" "$DATA_ROOT" --skip-old-files
        [ -f "$VOC/ImageSets/Segmentation/test.txt" ] || discard_archive voc_test "$TEST_TAR" "$TEST_TAR has no ImageSets/Segmentation/test.txt"
    ); then
        mark_done voc_test
        maybe_delete "$TEST_TAR"
    else
        warn "VOC 2012 test images not installed. The evaluation server needs a login: download" \
             "VOC2012test.tar by hand and rerun with VOC_TEST_URL=/path/to/VOC2012test.tar" \
             "(or VOC_TEST=0 to stop trying). Everything else is ready."
    fi
fi

log "done: $VOC"
