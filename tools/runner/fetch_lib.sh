# Shared helpers of config_voc.sh and config_coco.sh (sourced, not executed).
#
# Every command whose failure matters is checked explicitly (`|| die ...`), so the helpers stay
# correct even where bash ignores `set -e` (inside `if`, `||` or `!` contexts).
#
# Expects: PY (python command), MARKERS (marker folder), FORCE (1 = ignore markers),
# CALLER_DIR (the caller's working directory, for relative local sources).

log()  { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# Step markers: a step whose marker exists is skipped on the next run (unless FORCE=1).
is_done()   { [ "${FORCE:-0}" != 1 ] && [ -f "$MARKERS/$1.done" ]; }
mark_done() { mkdir -p "$MARKERS" && date -u +%Y-%m-%dT%H:%M:%SZ > "$MARKERS/$1.done" || die "cannot write marker $MARKERS/$1.done"; }

# Local source of a URL: prints the path for file:// URLs and plain paths, nothing for remote ones.
# Relative paths are relative to CALLER_DIR (the directory the script was started from).
local_source() {
    local p
    case "$1" in
        file://*) p=${1#file://} ;;
        *://*) return 0 ;;
        *) p=$1 ;;
    esac
    case "$p" in
        /*) ;;
        *) p=${CALLER_DIR:-$PWD}/$p ;;
    esac
    printf '%s\n' "$p"
}

# fetch URL DEST: download (resumable) or copy a local file to DEST, via DEST.part.
fetch() {
    local url=$1 dest=$2 src part="$2.part"
    mkdir -p "$(dirname "$dest")" || die "cannot create $(dirname "$dest")"
    src=$(local_source "$url")
    if [ -n "$src" ]; then
        [ -f "$src" ] || die "local source $src (from '$url') does not exist"
        if [ "${LINK_LOCAL:-0}" = 1 ]; then
            ln -sfn "$(realpath "$src")" "$dest" || die "cannot link $src to $dest"
            return 0
        fi
        log "copying $src -> $dest"
        cp -f "$src" "$part" || die "cannot copy $src to $part"
    elif command -v wget >/dev/null 2>&1; then
        log "downloading $url -> $dest"
        # -c resumes a previous partial download of the same .part file.
        wget -c --tries=5 --progress=dot:giga -O "$part" "$url" || die "download of $url failed (rerun to resume)"
    elif command -v curl >/dev/null 2>&1; then
        log "downloading $url -> $dest"
        curl -fL --retry 5 -C - -o "$part" "$url" || die "download of $url failed (rerun to resume)"
    else
        die "neither wget nor curl is installed"
    fi
    mv -f "$part" "$dest" || die "cannot move $part to $dest"
}

is_zip() { "$PY" -c 'import sys, zipfile; sys.exit(0 if zipfile.is_zipfile(sys.argv[1]) else 1)' "$1"; }

# check_archive FILE: structural integrity (every member of a zip CRC-checked; a tar fully listed).
check_archive() {
    if is_zip "$1"; then
        "$PY" -c '
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    bad = z.testzip()
sys.exit(f"corrupt member {bad}" if bad else 0)' "$1"
    else
        tar -tf "$1" > /dev/null
    fi
}

# fetch_verified NAME URL DEST MD5: fetch unless already verified, then verify:
#   MD5 = 32 hex digits -> md5sum must match; MD5 = "skip" -> no check at all;
#   MD5 empty -> integrity check of the archive (zip CRCs / full tar listing).
# A file failing verification is renamed to DEST.bad so that the next run downloads afresh.
# Only a verified file gets the marker NAME.verified: with MD5=skip nothing was verified, so a
# later run checks the kept file again (with the MD5 it is given then).
fetch_verified() {
    local name=$1 url=$2 dest=$3 md5=${4:-}
    if is_done "$name.verified" && [ -e "$dest" ]; then
        log "skip: $dest already downloaded and verified"
        return 0
    fi
    [ -e "$dest" ] || fetch "$url" "$dest"
    if [ "$md5" = skip ]; then
        log "checksum of $dest skipped (md5=skip; not marked verified)"
        return 0
    elif [ -n "$md5" ]; then
        log "checking md5 of $dest"
        local got
        got=$(md5sum "$dest" | cut -d' ' -f1) || die "md5sum of $dest failed"
        if [ "$got" != "$md5" ]; then
            mv -f "$dest" "$dest.bad"
            die "md5 mismatch for $dest: got $got, expected $md5 (file moved to $dest.bad; rerun to download again)"
        fi
    else
        log "no md5 known for $dest: checking archive integrity"
        if ! check_archive "$dest"; then
            mv -f "$dest" "$dest.bad"
            die "$dest is not a readable archive (moved to $dest.bad; rerun to download again)"
        fi
    fi
    mark_done "$name.verified"
}

# discard_archive NAME ARCHIVE PROBLEM: ARCHIVE is unusable: remove its NAME.verified marker,
# move it to ARCHIVE.bad (kept for a look) and stop saying how to retry.
discard_archive() {
    rm -f "$MARKERS/$1.verified.done"
    mv -f "$2" "$2.bad" 2>/dev/null || rm -f "$2"
    die "$3; moved to $2.bad and its verified marker removed: rerun to download it again (check its URL and md5)"
}

# extract NAME ARCHIVE DEST [extra tar options]: zip or (possibly compressed) tar, detected by
# content; an archive that fails to extract is discarded (discard_archive).
extract() {
    local name=$1 archive=$2 dest=$3
    shift 3
    mkdir -p "$dest" || die "cannot create $dest"
    log "extracting $archive -> $dest"
    if is_zip "$archive"; then
        if command -v unzip >/dev/null 2>&1; then
            unzip -q -o "$archive" -d "$dest" || discard_archive "$name" "$archive" "unzip of $archive failed"
        else
            "$PY" -m zipfile -e "$archive" "$dest" || discard_archive "$name" "$archive" "extraction of $archive failed"
        fi
    else
        tar -xf "$archive" -C "$dest" "$@" || discard_archive "$name" "$archive" "tar extraction of $archive failed"
    fi
}
