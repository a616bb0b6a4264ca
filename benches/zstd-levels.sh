#!/usr/bin/env bash
# zstd-levels.sh — what each zstd level costs and saves on a real closure: compression
# seconds per GB of NAR (wall and CPU, one file per NAR as the server makes them), the
# compressed share, decompression seconds per GB, and what the file sizes mean on a link.
#
# USAGE
#   benches/zstd-levels.sh NAR_DIR
#
#   NAR_DIR holds uncompressed NARs (`*.nar`), e.g. the `www/none/nar` directory that
#   `WORK_DIR=… benches/substitute.sh` leaves behind (a `nix copy --to file://…?compression=none`
#   cache). Each setting compresses every NAR to its own file with the zstd command line tool
#   (the same libzstd as the server's `zstd` crate; `-T2` = two worker threads, like the
#   server's multi-threaded encoder on two cores; `--long` = long-distance matching, 128 MiB
#   window), then decompresses them all. Also xz -6 (the server's former default) for reference.
#   Prints a markdown table; measures, never fails on a slow figure.
#
# ENV
#   LEVELS="1 3 6 9 12 19"   zstd levels
#   MODES="T1 T2 T2long"     T1: one thread; T2: two workers; T2long: two workers and --long
#   XZ=1                     also measure xz -6 (-T2); slow: minutes per GB
#   LINKS_MBIT="100 20"      links for the transfer-time columns (size × 8 / rate)

set -euo pipefail
NAR_DIR=${1:?usage: benches/zstd-levels.sh NAR_DIR}
LEVELS=${LEVELS:-1 3 6 9 12 19}
MODES=${MODES:-T1 T2 T2long}
XZ=${XZ:-1}
LINKS_MBIT=${LINKS_MBIT:-100 20}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/benches/lib.sh"
for t in zstd xz /usr/bin/time awk; do command -v "$t" >/dev/null 2>&1 || die "missing tool: $t"; done
mapfile -t NARS < <(find "$NAR_DIR" -maxdepth 1 -name '*.nar' -type f | sort)
[ ${#NARS[@]} -gt 0 ] || die "no *.nar files in $NAR_DIR"
NAR_BYTES=$(cat "${NARS[@]}" | wc -c)
GB=$(calc "printf \"%.6f\", $NAR_BYTES / 1e9")
OUT=$(mktemp -d /tmp/tailcache-zstd-levels.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
# Read once so that the first setting does not pay for a cold page cache.
cat "${NARS[@]}" > /dev/null

# row NAME DECODER COMPRESSOR…: compresses every NAR with COMPRESSOR (stdin to stdout), then
# decodes every file with DECODER; prints one table row.
row() {
    local name=$1 dec=$2; shift 2
    local i=0 f c_wall c_cpu size d_wall d_cpu t
    rm -f "$OUT"/*
    t=$( { /usr/bin/time -f '%e %U %S' bash -c '
        out=$1; shift; n=0; cmd=()
        while [ "$1" != "--" ]; do cmd+=("$1"); shift; done; shift
        for f in "$@"; do n=$((n + 1)); "${cmd[@]}" < "$f" > "$out/$n.z"; done' _ "$OUT" "$@" -- "${NARS[@]}"; } 2>&1 | tail -1)
    read -r c_wall u s <<< "$t"
    c_cpu=$(calc "print $u + $s")
    size=$(cat "$OUT"/*.z | wc -c)
    t=$( { /usr/bin/time -f '%e %U %S' bash -c 'for f in "$@"; do '"$dec"' < "$f" > /dev/null; done' _ "$OUT"/*.z; } 2>&1 | tail -1)
    read -r d_wall u s <<< "$t"
    d_cpu=$(calc "print $u + $s")
    local links=""
    for r in $LINKS_MBIT; do links="$links | $(calc "printf \"%.0f\", $size * 8 / ($r * 1e6)")"; done
    printf '| %s | %.1f | %.1f | %.3f | %.1f%s |\n' "$name" \
        "$(calc "print $c_wall / $GB")" "$(calc "print $c_cpu / $GB")" "$(calc "print $size / $NAR_BYTES")" \
        "$(calc "print $d_cpu / $GB")" "$links"
}

hdr_links=""; sep_links=""
for r in $LINKS_MBIT; do hdr_links="$hdr_links | s at $r Mbit/s"; sep_links="$sep_links|---:"; done
echo "# zstd levels on $(basename "$(dirname "$NAR_DIR")")/$(basename "$NAR_DIR"): ${#NARS[@]} NARs, $(calc "printf \"%.0f\", $NAR_BYTES / 1048576") MiB"
echo
echo "$(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg) at the start; $(zstd --version | head -1)."
echo "One file per NAR. Compress/decompress: seconds per GB of NAR (wall; CPU = user+sys)."
echo "Link columns: compressed bytes × 8 / rate (transfer only)."
echo
echo "| setting | compress wall s/GB | compress CPU s/GB | size/NAR | decode CPU s/GB$hdr_links |"
echo "|---|---:|---:|---:|---:$sep_links"
row "none" "cat" cat
for l in $LEVELS; do
    for m in $MODES; do
        case $m in
            T1) row "zstd -$l, 1 thread" "zstd -dq" zstd -q --single-thread "-$l" -c ;;
            T2) row "zstd -$l, 2 workers" "zstd -dq" zstd -q -T2 "-$l" -c ;;
            T2long) row "zstd -$l, 2 workers, --long" "zstd -dq --long=27" zstd -q -T2 --long=27 "-$l" -c ;;
            *) die "unknown mode $m" ;;
        esac
    done
done
[ "$XZ" = 1 ] && row "xz -6, 2 threads" "xz -dq" xz -q -T2 -6 -c
echo
echo "load $(cut -d' ' -f1-3 /proc/loadavg) at the end."
