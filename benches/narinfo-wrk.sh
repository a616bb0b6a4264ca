#!/usr/bin/env bash
# narinfo-wrk.sh — narinfo hits per second, tailcache against nginx serving the same narinfo
# files (`nix copy --to file://`), side by side in one run, while Nix keeps adding paths to the
# store tailcache reads (its database is opened read-only, as in production).
#
# USAGE
#   benches/narinfo-wrk.sh [--keep]
#
#   1. Builds PATHS store paths with real Nix in a throwaway chroot store, each referring to
#      up to 8 earlier ones (narinfos with references, like a system's), and writes them as a
#      `nix copy --to file://…?compression=none` cache for nginx.
#   2. Starts nginx and tailcache (compression none: every narinfo is final at once) on
#      127.0.0.1, and a loop that adds a small path to the store every 0.2 s with nix-store
#      --add (Nix writing the database while tailcache reads it).
#   3. ROUNDS times, for each wrk setting in CONNS (`THREADS:CONNECTIONS`), runs wrk for
#      DURATION seconds against nginx then tailcache (order swapped every round), cycling
#      through every narinfo (each connection starts at a different path).
#   Prints the median requests/s of each server and tailcache/nginx, and writes them to
#   bench-results/narinfo-wrk-<date>.md. Measures; never fails on a slow figure (the exit
#   status is non-zero when the setup fails or wrk saw errors or non-200 answers).
#
# ENV
#   PATHS=400            store paths (narinfos)
#   CONNS="2:32 1:1"     wrk settings, THREADS:CONNECTIONS
#   DURATION=5           seconds of each wrk run
#   ROUNDS=3             rounds (servers interleaved)
#   TAILCACHE_BIN=…      use this binary instead of `cargo build --release`
#   TAILCACHE_PROFILE=release  the cargo profile to build
#   KEEP=1 / --keep      keep the temp dir
#
# Everything listens on 127.0.0.1; every process started here is stopped on exit. Nix runs
# with a private configuration; the machine's store and nix.conf are never touched.

set -euo pipefail

PATHS=${PATHS:-400}
CONNS=${CONNS:-2:32 1:1}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/benches/lib.sh"
script_args "$@"

for t in nix-build nix-store nix wrk curl; do
    command -v "$t" >/dev/null 2>&1 || die "missing tool: $t"
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "missing tool: nginx"

on_exit

D=$(mktemp -d /tmp/tailcache-narinfo.XXXXXX)
S=$D/store
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
private_nix "$D" $'max-jobs = 2'
tailcache_bin "$ROOT"

# ------------------------------------------------------------------ store paths and caches
log "building $PATHS store paths in $S"
cat > "$D/paths.nix" <<'EOF'
{ nonce, n }:
let
  mk = i: deps: builtins.derivation {
    name = "narinfo-${toString i}"; inherit nonce; system = builtins.currentSystem;
    builder = "/bin/sh"; PATH = "/usr/bin:/bin";
    args = [ "-c" "echo ${toString i} ${toString deps} > $out" ];
  };
  # Path i refers to up to 8 of the paths before it.
  go = i: acc: if i == n then acc else
    go (i + 1) (acc ++ [ (mk i (builtins.genList (k: builtins.elemAt acc ((i * 7 + k * 13) - ((i * 7 + k * 13) / i) * i)) (if i < 8 then i else 8))) ]);
in go 0 [ ]
EOF
nonce=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
nix-build --store "$S" "$D/paths.nix" --no-out-link --argstr nonce "$nonce" --arg n "$PATHS" \
    > "$D/roots.txt" 2> "$D/build.log" || { tail -20 "$D/build.log" >&2; die "nix-build failed"; }
nix-store --store "$S" -qR $(cat "$D/roots.txt") | sort > "$D/paths.txt"
npaths=$(wc -l < "$D/paths.txt")
nix-store --store "$S" --generate-binary-cache-key narinfo-bench-1 "$D/key.sec" "$D/key.pub"
chmod 600 "$D/key.sec"
nix copy --from "$S" --to "file://$D/www?compression=none&secret-key=$D/key.sec" $(cat "$D/paths.txt") \
    2> "$D/copy.log" || { tail "$D/copy.log" >&2; die "nix copy failed"; }

# ------------------------------------------------------------------ servers
NGINX_PORT=$(free_port)
nginx_conf "$D/nginx" "$D/www" "127.0.0.1:$NGINX_PORT"
"$NGINX" -p "$D/nginx" -e "$D/nginx/logs/error.log" -c "$D/nginx/nginx.conf" > "$D/nginx/logs/stdout" 2>&1 &
LIVE[$!]=1
mkdir -p "$D/tc"
cat > "$D/tc/config.toml" <<EOF
state_dir = "$D/tc/state"
[api]
bind = "127.0.0.1:0"
[cache]
bind = "127.0.0.1:0"
store_root = "$S"
compression = "none"
secret_key_files = ["$D/key.sec"]
EOF
env RUST_LOG=warn "$BIN" serve --config "$D/tc/config.toml" > "$D/tc/stdout" 2> "$D/tc/stderr" &
TC_PID=$!
LIVE[$TC_PID]=1
TC_URL=$(await_line "$D/tc/stdout" "$D/tc/stderr" '^cache listening on \(http://127\.0\.0\.1:[0-9]*\)$' "$TC_PID" tailcache)
NGINX_URL=http://127.0.0.1:$NGINX_PORT
for _ in $(seq 100); do curl -sf -o /dev/null "$NGINX_URL/nix-cache-info" && break; sleep 0.1; done
# Both must answer every narinfo, with the same signed fingerprint fields.
first=$(hash_of "$(head -1 "$D/paths.txt")")
for u in "$NGINX_URL" "$TC_URL"; do
    curl -sf "$u/$first.narinfo" | grep -q '^Sig: narinfo-bench-1:' || die "$u does not serve a signed narinfo"
done

# Nix adding paths while the servers answer.
(
    i=0
    while :; do
        i=$((i + 1))
        echo "added $i $nonce" > "$D/add-$i"
        nix-store --store "$S" --add "$D/add-$i" > /dev/null 2>&1 || true
        rm -f "$D/add-$i"
        sleep 0.2
    done
) &
LIVE[$!]=1

# ------------------------------------------------------------------ measurements
wrk_narinfo_lua "$D/paths.txt" "" > "$D/narinfo.lua"

TSV=("round	conns	server	rps")
run_wrk() { # SERVER URL THREADS CONNS ROUND
    local out rps errs
    out=$(wrk -t"$3" -c"$4" -d"${DURATION}s" -s "$D/narinfo.lua" "$2" | sed -n 's/^RESULT //p')
    read -r rps errs <<< "$out"
    [ "${errs:-1}" -eq 0 ] || die "wrk saw $errs errors against $1"
    log "  round $5, -t$3 -c$4, $1: $rps req/s"
    TSV+=("$5	$3:$4	$1	$rps")
}
log "wrk ${DURATION}s per run, $npaths narinfos, $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
    for tc in $CONNS; do
        t=${tc%%:*} c=${tc##*:}
        if [ $((r % 2)) = 1 ]; then
            run_wrk nginx "$NGINX_URL" "$t" "$c" "$r"; run_wrk tailcache "$TC_URL" "$t" "$c" "$r"
        else
            run_wrk tailcache "$TC_URL" "$t" "$c" "$r"; run_wrk nginx "$NGINX_URL" "$t" "$c" "$r"
        fi
    done
done
added=$(find "$S/nix/store" -maxdepth 1 -name '*-add-*' | wc -l)

mkdir -p "$ROOT/bench-results"
out=$ROOT/bench-results/narinfo-wrk-$(date +%Y-%m-%d-%H%M%S).md
printf '%s\n' "${TSV[@]}" > "${out%.md}.tsv"
{
    echo "# narinfo hits: tailcache vs nginx — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Binary $BIN; script from $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?');"
    echo "$(nproc) CPUs, load $LOAD_START at the start and $(cut -d' ' -f1-3 /proc/loadavg) at the end."
    echo "$npaths narinfos (up to 8 references each), wrk ${DURATION}s per run, $ROUNDS rounds, servers interleaved;"
    echo "Nix added $added paths to the store during the runs (tailcache reads its database read-only)."
    echo
    echo "| wrk | nginx req/s | tailcache req/s | tailcache/nginx |"
    echo "|---|---:|---:|---:|"
    for tc in $CONNS; do
        awk -F'\t' -v k="$tc" '
            function median(a, n,   i, j, t) {
                for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            NR > 1 && $2 == k { if ($3 == "nginx") n[++a] = $4; else t[++b] = $4 }
            END { split(k, tc, ":"); mn = median(n, a); mt = median(t, b)
                  printf "| -t%s -c%s | %.0f | %.0f | %.2f |\n", tc[1], tc[2], mn, mt, mt / mn }' "${out%.md}.tsv"
    done
} > "$out"
cat "$out"
log "written to $out"
