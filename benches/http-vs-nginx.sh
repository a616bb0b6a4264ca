#!/usr/bin/env bash
# http-vs-nginx.sh — end-to-end benchmark of tailcache's binary cache against nginx serving the same store
# paths from a `nix copy --to file://` cache (the physical reference), side by side in one
# run: narinfo latency over one keep-alive
# connection, NAR download time (100 MiB path, 2000-small-file path; 1 and 16 connections;
# uncompressed and precompressed xz) and server RSS while 16 clients download 100 MiB.
#
# USAGE
#   benches/http-vs-nginx.sh [--keep]
#
#   Prints a markdown table (nginx, tailcache, ratio, goal) and writes it to
#   bench-results/http-vs-nginx-<date>.md. Measures; never fails on a slow figure (exit
#   status is non-zero only when the setup or a request fails).
#
# ENV
#   BIG_MIB=100          size of the random-content path
#   SMALL_FILES=2000     files (1-8 KiB each) in the small-file path
#   NARINFO_PATHS=50     extra tiny paths for the narinfo latency test
#   DURATION=5           seconds of each wrk narinfo run
#   NARINFO_CYCLES=40    rounds over every narinfo in the curl latency run
#   RUNS=7               hyperfine runs per download measurement (after 1 warm-up); median reported
#   RSS_ROUNDS=3         back-to-back rounds of 16 downloads while sampling RSS
#   COMPRESS_TIMEOUT=900 seconds to wait for tailcache's background xz jobs
#   TAILCACHE_BIN=…      use this binary instead of `cargo build --release`
#   TAILCACHE_PROFILE=release  the cargo profile to build; `profiling` keeps symbols (for perf)
#   TAILCACHE_ENV="K=V …" extra environment for the tailcache servers, e.g. allocator
#                        settings such as MALLOC_MMAP_THRESHOLD_=131072 (noted in the report)
#   KEEP=1 / --keep      keep the temp dir (store, caches, logs)
#
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
# Nix runs with a private configuration (NIX_CONF_DIR in the temp dir); the machine's
# store and nix.conf are never touched.

set -euo pipefail

BIG_MIB=${BIG_MIB:-100}
SMALL_FILES=${SMALL_FILES:-2000}
NARINFO_PATHS=${NARINFO_PATHS:-50}
DURATION=${DURATION:-5}
RUNS=${RUNS:-7}
COMPRESS_TIMEOUT=${COMPRESS_TIMEOUT:-900}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/benches/lib.sh"
script_args "$@"
on_exit

# ------------------------------------------------------------------ tools
need_tools() {
    local missing=() t pkg
    for t in nginx:nginx wrk:wrk hyperfine:hyperfine curl:curl xz:xz-utils python3:python3; do
        command -v "${t%%:*}" >/dev/null 2>&1 || command -v "/usr/sbin/${t%%:*}" >/dev/null 2>&1 \
            || missing+=("${t#*:}")
    done
    command -v nix-build >/dev/null 2>&1 || missing+=(nix-bin)
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { "${sudo[@]}" apt-get update >/dev/null && \
             "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
        || die "cannot install ${missing[*]}"
}
need_tools
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# ------------------------------------------------------------------ workspace
D=$(mktemp -d /tmp/tailcache-bench.XXXXXX)
S=$D/store
mkdir -p "$D/conf" "$D/xdg-config" "$D/xdg-cache" "$D/src" "$D/out"

private_nix "$D" $'narinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\nmax-jobs = 2'

# ------------------------------------------------------------------ tailcache binary
tailcache_bin "$ROOT"

# ------------------------------------------------------------------ store paths
log "building store paths in $S (big ${BIG_MIB} MiB, ${SMALL_FILES} small files, ${NARINFO_PATHS} tiny)"
cat > "$D/src/paths.nix" <<'EOF'
{ nonce, bigMiB, smallFiles, tinyPaths }:
let
  mk = name: script: builtins.derivation {
    inherit name nonce; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" script ];
  };
  big = mk "bench-big" "head -c ${toString (bigMiB * 1048576)} /dev/urandom > $out";
  # Sizes 1-8 KiB spread by a multiplicative step; 16 directories, a few executables.
  small = mk "bench-small-files" ''
    mkdir $out
    i=0
    while [ $i -lt ${toString smallFiles} ]; do
      d=$out/d$((i % 16)); [ -d $d ] || mkdir $d
      head -c $((1024 + (i * 7919) % 7169)) /dev/urandom > $d/f$i
      [ $((i % 50)) -eq 0 ] && chmod +x $d/f$i
      i=$((i + 1))
    done
  '';
  dep = mk "bench-dep" "echo dep > $out";
  tiny = builtins.genList
    (i: mk "bench-tiny-${toString i}" "echo ${dep} ${toString i} > $out") tinyPaths;
in [ big small ] ++ tiny
EOF
nonce=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
nix-build --store "$S" "$D/src/paths.nix" --no-out-link --argstr nonce "$nonce" \
    --arg bigMiB "$BIG_MIB" --arg smallFiles "$SMALL_FILES" --arg tinyPaths "$NARINFO_PATHS" \
    > "$D/roots.txt" 2> "$D/build.log" || { tail -20 "$D/build.log" >&2; die "nix-build failed"; }
BIG=$(sed -n 1p "$D/roots.txt")
SMALL=$(sed -n 2p "$D/roots.txt")
nix-store --store "$S" -qR $(cat "$D/roots.txt") | sort > "$D/paths.txt"
npaths=$(wc -l < "$D/paths.txt")

nix-store --generate-binary-cache-key bench-1 "$D/key.sec" "$D/key.pub"
chmod 600 "$D/key.sec"

for c in none xz; do
    log "nix copy --to file://…/cache-$c ($npaths paths)"
    t0=$SECONDS
    nix copy --from "$S" --to "file://$D/www/$c?compression=$c&secret-key=$D/key.sec" \
        $(cat "$D/paths.txt") 2> "$D/copy-$c.log" || { tail "$D/copy-$c.log" >&2; die "nix copy failed"; }
    log "  written in $((SECONDS - t0)) s"
done

# ------------------------------------------------------------------ servers
NGX=$D/nginx
NGINX_PORT=$(free_port)
nginx_conf "$NGX" "$D/www" "127.0.0.1:$NGINX_PORT"
"$NGINX" -p "$NGX" -e "$NGX/logs/error.log" -c "$NGX/nginx.conf" > "$NGX/logs/stdout" 2>&1 &
NGINX_PID=$!
LIVE[$NGINX_PID]=1

# start_tailcache NAME COMPRESSION: starts an instance, sets TC_PORT_<NAME> and TC_PID_<NAME>.
start_tailcache() {
    local name=$1 comp=$2 dir=$D/tc-$1 port="" i
    mkdir -p "$dir"
    : > "$dir/stdout"
    cat > "$dir/config.toml" <<EOF
state_dir = "$dir/state"
[api]
bind = "127.0.0.1:0"
[cache]
bind = "127.0.0.1:0"
store_root = "$S"
compression = "$comp"
compression_level = 6
secret_key_files = ["$D/key.sec"]
EOF
    # Word splitting of TAILCACHE_ENV is intended: it is a list of K=V words.
    # shellcheck disable=SC2086
    env RUST_LOG=warn ${TAILCACHE_ENV:-} "$BIN" serve --config "$dir/config.toml" > "$dir/stdout" 2> "$dir/stderr" &
    local pid=$!
    LIVE[$pid]=1
    port=$(await_line "$dir/stdout" "$dir/stderr" '^cache listening on http://127\.0\.0\.1:\([0-9]*\)$' "$pid" "tailcache ($name)")
    printf -v "TC_PORT_$name" '%s' "$port"
    printf -v "TC_PID_$name" '%s' "$pid"
}
start_tailcache none none
start_tailcache xz xz

NGINX_URL=http://127.0.0.1:$NGINX_PORT
TCN_URL=http://127.0.0.1:$TC_PORT_none
TCX_URL=http://127.0.0.1:$TC_PORT_xz
for i in $(seq 100); do
    curl -sf -o /dev/null "$NGINX_URL/none/nix-cache-info" && break
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$NGX/logs/"* >&2; die "nginx exited"; }
    sleep 0.1
done
curl -sf -o /dev/null "$NGINX_URL/none/nix-cache-info" || die "nginx does not answer"
log "nginx $NGINX_URL, tailcache none $TCN_URL, tailcache xz $TCX_URL"

# Asking for every narinfo queues compression on the xz instance; wait until all advertise xz.
log "waiting for tailcache's background xz compression"
t0=$SECONDS
while :; do
    pending=0
    while read -r p; do
        curl -sf "$TCX_URL/$(hash_of "$p").narinfo" | grep -qx 'Compression: xz' || pending=$((pending + 1))
    done < "$D/paths.txt"
    [ "$pending" -eq 0 ] && break
    [ $((SECONDS - t0)) -lt "$COMPRESS_TIMEOUT" ] || die "$pending paths still uncompressed after ${COMPRESS_TIMEOUT}s"
    sleep 2
done
log "  compressed in $((SECONDS - t0)) s"

# ------------------------------------------------------------------ URLs and sanity checks
# url_of BASE_URL NARINFO_URL_PREFIX PATH → absolute NAR URL from the server's own narinfo.
fetch_narinfo() { curl -sf "$1/$(hash_of "$2").narinfo" > "$3" || die "GET $1/$(hash_of "$2").narinfo failed"; }
declare -A URL SIZE
for which in big small; do
    p=$BIG; [ "$which" = small ] && p=$SMALL
    fetch_narinfo "$NGINX_URL/none" "$p" "$D/out/ngx-none-$which.narinfo"
    fetch_narinfo "$NGINX_URL/xz" "$p" "$D/out/ngx-xz-$which.narinfo"
    fetch_narinfo "$TCN_URL" "$p" "$D/out/tc-none-$which.narinfo"
    fetch_narinfo "$TCX_URL" "$p" "$D/out/tc-xz-$which.narinfo"
    URL[ngx-none-$which]=$NGINX_URL/none/$(narinfo_field "$D/out/ngx-none-$which.narinfo" URL)
    URL[ngx-xz-$which]=$NGINX_URL/xz/$(narinfo_field "$D/out/ngx-xz-$which.narinfo" URL)
    URL[tc-none-$which]=$TCN_URL/$(narinfo_field "$D/out/tc-none-$which.narinfo" URL)
    URL[tc-xz-$which]=$TCX_URL/$(narinfo_field "$D/out/tc-xz-$which.narinfo" URL)
    for k in ngx-none ngx-xz tc-none tc-xz; do
        f=$D/out/$k-$which.narinfo
        SIZE[$k-$which]=$(narinfo_field "$f" FileSize)
        [ -n "${SIZE[$k-$which]}" ] || SIZE[$k-$which]=$(narinfo_field "$f" NarSize)
    done
    [ "$(narinfo_field "$D/out/tc-none-$which.narinfo" Compression)" = none ] \
        || die "tailcache none advertises compression for $p"
    [ "$(narinfo_field "$D/out/tc-xz-$which.narinfo" Compression)" = xz ] \
        || die "tailcache xz does not advertise xz for $p"
    # Measuring a wrong answer would be meaningless: both servers must send the same NAR.
    want=$(narinfo_field "$D/out/ngx-none-$which.narinfo" NarHash)
    [ "$want" = "$(narinfo_field "$D/out/tc-none-$which.narinfo" NarHash)" ] \
        || die "NarHash differs between nix copy and tailcache for $p"
    a=$(curl -sf "${URL[ngx-none-$which]}" | sha256sum | cut -d' ' -f1)
    b=$(curl -sf "${URL[tc-none-$which]}" | sha256sum | cut -d' ' -f1)
    c=$(curl -sf "${URL[tc-xz-$which]}" | xz -dc | sha256sum | cut -d' ' -f1)
    [ "$a" = "$b" ] || die "tailcache's on-the-fly NAR of $p differs from nix-store's"
    [ "$a" = "$c" ] || die "tailcache's .nar.xz of $p does not decompress to the NAR"
done
log "NAR sizes: big ${SIZE[ngx-none-big]} B, small-files ${SIZE[ngx-none-small]} B (xz: nix ${SIZE[ngx-xz-big]}/${SIZE[ngx-xz-small]}, tailcache ${SIZE[tc-xz-big]}/${SIZE[tc-xz-small]})"

# ------------------------------------------------------------------ measurements
declare -A R   # results: R[metric/server] = value

# narinfo: requests/s from wrk (1 thread, 1 keep-alive connection, cycling through every
# narinfo), and the per-request latency distribution from one curl that fetches every
# narinfo NARINFO_CYCLES times over one reused connection. wrk's own latency histogram is not
# used: with -c1 its mean disagrees with its request rate (mean > 1/rate), while curl's
# per-transfer time_total is exact.
NARINFO_CYCLES=${NARINFO_CYCLES:-40}
wrk_script() { # KEY PREFIX → lua file cycling PREFIX/<hash>.narinfo for every path
    local f=$D/out/narinfo-$1.lua
    wrk_narinfo_lua "$D/paths.txt" "$2" > "$f"
    echo "$f"
}
# measure_narinfo KEY BASE_URL PREFIX
measure_narinfo() {
    local key=$1 base=$2 prefix=$3 out rps errs args=() i p stats
    out=$(wrk -t1 -c1 -d"${DURATION}s" -s "$(wrk_script "$key" "$prefix")" "$base" | sed -n 's/^RESULT //p')
    read -r rps errs <<< "$out"
    [ "${errs:-1}" -eq 0 ] || die "wrk saw $errs errors against $base$prefix"
    for i in $(seq "$NARINFO_CYCLES"); do
        while read -r p; do args+=(-o /dev/null "$base$prefix/$(hash_of "$p").narinfo"); done < "$D/paths.txt"
    done
    curl -sSf -w '%{time_total} %{num_connects} %{http_code}\n' "${args[@]}" > "$D/out/lat-$key.txt" \
        || die "curl narinfo latency run failed against $base$prefix"
    awk '$3 != 200 { bad++ } { c += $2 } END { exit (bad > 0 || c != 1) }' "$D/out/lat-$key.txt" \
        || die "narinfo latency run against $base$prefix: not all 200 over one connection"
    stats=$(sort -n "$D/out/lat-$key.txt" | awk '{ a[NR] = $1; s += $1 }
        END { printf "%.1f %.1f %.1f", s / NR * 1e6, a[int(NR * 0.5)] * 1e6, a[int(NR * 0.99)] * 1e6 }')
    read -r mean p50 p99 <<< "$stats"
    R[narinfo-rps/$key]=$rps; R[narinfo-mean/$key]=$mean; R[narinfo-p50/$key]=$p50; R[narinfo-p99/$key]=$p99
}
log "narinfo latency (wrk ${DURATION}s; curl $NARINFO_CYCLES × $npaths narinfos; 1 connection each)"
measure_narinfo ngx-none "$NGINX_URL" /none
measure_narinfo tc-none "$TCN_URL" ""
measure_narinfo ngx-xz "$NGINX_URL" /xz
measure_narinfo tc-xz "$TCX_URL" ""

# hyperfine_median KEY COMMAND… → median seconds into R[KEY]. The median, not the mean:
# on a shared machine one descheduled run would otherwise move the figure most.
hyperfine_median() {
    local key=$1 f=$D/out/hf-${1//\//_}
    shift
    hyperfine --style none --warmup 1 --runs "$RUNS" --export-csv "$f.csv" "$@" > "$f.log" 2>&1 \
        || { cat "$f.log" >&2; die "hyperfine failed for $key"; }
    R[$key]=$(sed -n 2p "$f.csv" | cut -d, -f4)
}
log "NAR downloads (hyperfine, $RUNS runs + 1 warm-up each)"
for which in big small; do
    for k in ngx-none tc-none ngx-xz tc-xz; do
        u=${URL[$k-$which]}
        hyperfine_median "dl1-$which/$k" -N "curl -sSf -o /dev/null $u"
        hyperfine_median "dl16-$which/$k" "seq 16 | xargs -P16 -I{} curl -sSf -o /dev/null $u"
    done
done

# RSS while 16 clients download the big NAR. nginx is its master plus workers.
rss_kib() { # PID… → summed VmRSS in KiB
    local p s=0 v
    for p in "$@"; do
        v=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$p/status" 2>/dev/null || true)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}
# measure_rss KEY URL PID… : max VmRSS sampled every 100 ms while 16 clients download URL,
# RSS_ROUNDS times back to back (growth from round to round would show up here).
RSS_ROUNDS=${RSS_ROUNDS:-3}
measure_rss() {
    local key=$1 url=$2
    shift 2
    local base max=0 cur
    base=$(rss_kib "$@")
    seq $((16 * RSS_ROUNDS)) | xargs -P16 -I{} curl -sSf -o /dev/null "$url" &
    local dl=$!
    while kill -0 "$dl" 2>/dev/null; do
        cur=$(rss_kib "$@")
        [ "$cur" -gt "$max" ] && max=$cur
        sleep 0.1
    done
    wait "$dl" || die "download failed during RSS measurement ($url)"
    R[rss-base/$key]=$base
    R[rss-max/$key]=$max
}
nginx_pids=("$NGINX_PID" $(ps -o pid= --ppid "$NGINX_PID"))
log "RSS during 16 concurrent downloads of the big NAR ($RSS_ROUNDS × 16 downloads)"
measure_rss ngx-none "${URL[ngx-none-big]}" "${nginx_pids[@]}"
measure_rss tc-none "${URL[tc-none-big]}" "$TC_PID_none"
measure_rss ngx-xz "${URL[ngx-xz-big]}" "${nginx_pids[@]}"
measure_rss tc-xz "${URL[tc-xz-big]}" "$TC_PID_xz"
hwm_none=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$TC_PID_none/status")
hwm_xz=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$TC_PID_xz/status")

# ------------------------------------------------------------------ report
f1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }
mib() { awk -v x="$1" 'BEGIN { printf "%.1f", x / 1048576 }'; }
# verdict RATIO MIN → ok/MISSED (ratio must be ≥ MIN)
verdict() { awk -v r="$1" -v m="$2" 'BEGIN { print (r + 0 >= m) ? "ok" : "MISSED" }'; }

rows=()
row() { rows+=("| $1 | $2 | $3 | $4 | $5 |"); }

for c in none xz; do
    n=${R[narinfo-rps/ngx-$c]} t=${R[narinfo-rps/tc-$c]}
    r=$(div "$t" "$n")
    row "narinfo req/s, 1 conn ($c instance)" "$(f1 "$n")" "$(f1 "$t")" "$r" "≥ 1.0: $(verdict "$r" 1.0)"
    r=$(div "${R[narinfo-mean/ngx-$c]}" "${R[narinfo-mean/tc-$c]}")
    row "narinfo latency µs, mean / p50 / p99 ($c)" \
        "$(f1 "${R[narinfo-mean/ngx-$c]}") / $(f1 "${R[narinfo-p50/ngx-$c]}") / $(f1 "${R[narinfo-p99/ngx-$c]}")" \
        "$(f1 "${R[narinfo-mean/tc-$c]}") / $(f1 "${R[narinfo-p50/tc-$c]}") / $(f1 "${R[narinfo-p99/tc-$c]}")" \
        "$r" "≥ 1.0: $(verdict "$r" 1.0)"
done
for which in big small; do
    label="big ${BIG_MIB} MiB"; [ "$which" = small ] && label="${SMALL_FILES} small files"
    for c in none xz; do
        if [ "$c" = none ]; then kind="uncompressed (tailcache: on the fly)"; else kind="xz (precompressed)"; fi
        goal=0.9; [ "$which/$c" = small/none ] && goal=0.5
        for n in 1 16; do
            tn=${R[dl$n-$which/ngx-$c]} tt=${R[dl$n-$which/tc-$c]}
            # Throughput of file bytes moved: n clients × file size / wall time.
            sn=$(awk -v s="${SIZE[ngx-$c-$which]}" -v n="$n" -v t="$tn" 'BEGIN { print s * n / t }')
            st=$(awk -v s="${SIZE[tc-$c-$which]}" -v n="$n" -v t="$tt" 'BEGIN { print s * n / t }')
            r=$(div "$st" "$sn")
            row "$label, $kind, $n conn: ms · MiB/s" \
                "$(f1 "$(awk -v t="$tn" 'BEGIN { print t * 1000 }')") · $(f1 "$(mib "$sn")")" \
                "$(f1 "$(awk -v t="$tt" 'BEGIN { print t * 1000 }')") · $(f1 "$(mib "$st")")" \
                "$r" "≥ $goal: $(verdict "$r" "$goal")"
        done
    done
done
for c in none xz; do
    kind="uncompressed on the fly"; [ "$c" = xz ] && kind="precompressed xz"
    mt=$(awk -v k="${R[rss-max/tc-$c]}" 'BEGIN { printf "%.1f", k / 1024 }')
    row "RSS MiB, 16 × big NAR, $kind (idle → max)" \
        "$(f1 "$(awk -v k="${R[rss-base/ngx-$c]}" 'BEGIN { print k / 1024 }')") → $(f1 "$(awk -v k="${R[rss-max/ngx-$c]}" 'BEGIN { print k / 1024 }')")" \
        "$(f1 "$(awk -v k="${R[rss-base/tc-$c]}" 'BEGIN { print k / 1024 }')") → $mt" \
        "" "≤ 64 MiB: $(awk -v m="$mt" 'BEGIN { print (m <= 64) ? "ok" : "MISSED" }')"
done

mkdir -p "$ROOT/bench-results"
stamp=$(date +%Y-%m-%d-%H%M%S)
out=$ROOT/bench-results/http-vs-nginx-$stamp.md
{
    echo "# tailcache vs nginx — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "tailcache $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?'), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(nproc) CPUs, $(uname -r)."
    echo "Paths: $npaths (big ${BIG_MIB} MiB random: NAR ${SIZE[ngx-none-big]} B; ${SMALL_FILES} files of 1–8 KiB: NAR ${SIZE[ngx-none-small]} B;"
    echo "xz files: nix copy ${SIZE[ngx-xz-big]} / ${SIZE[ngx-xz-small]} B, tailcache ${SIZE[tc-xz-big]} / ${SIZE[tc-xz-small]} B)."
    echo "narinfo: req/s from wrk -t1 -c1 -d${DURATION}s cycling all $npaths narinfos; latency from one curl fetching"
    echo "every narinfo $NARINFO_CYCLES times over one keep-alive connection. Downloads: hyperfine median of $RUNS runs"
    echo "(1 conn: one curl; 16 conn: 16 parallel curls, wall time until all finish). Ratio = tailcache throughput / nginx throughput"
    echo "(for latency rows: nginx mean / tailcache mean). RSS sampled every 100 ms while 16 clients download"
    echo "the big NAR $RSS_ROUNDS × 16 times (nginx: master + workers); idle = just before."
    [ -n "${TAILCACHE_ENV:-}" ] && echo "tailcache ran with environment: \`$TAILCACHE_ENV\`."
    echo "tailcache VmHWM over the whole run: none $((hwm_none / 1024)) MiB, xz $((hwm_xz / 1024)) MiB (includes compression jobs)."
    echo
    echo "| measurement | nginx | tailcache | ratio | goal |"
    echo "|---|---:|---:|---:|---|"
    printf '%s\n' "${rows[@]}"
} > "$out"
cat "$out"
log "written to $out"
