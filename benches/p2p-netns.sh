#!/usr/bin/env bash
# p2p-netns.sh — benchmark of peer-assisted fetches: one tailcache server
# and N peers in network namespaces joined by a bridge, with shaped links, fetching one large
# incompressible NAR (zstd) from the server alone (plain HTTP) or through `tailcache agent`.
#
# USAGE (as root)
#   benches/p2p-netns.sh [--keep]
#
#   Scenarios, each with a freshly started server (clean tracker) and fresh agents:
#     a  all N peers fetch from the server only (plain HTTP, curl, all at once)
#     b  all N peers fetch through their own agent (127.0.0.1 in their namespace), all at once
#     c  like b, but peer k starts at k·STAGGER seconds (arrivals one after another)
#     d  N = 1: one peer through its agent vs. the same peer with plain HTTP (overhead ratio)
#   Every downloaded file is checked (sha256 against the narinfo's FileHash): a wrong or
#   short file is reported as FAILED, never as a time. Times are reported, never asserted:
#   the exit status is non-zero only when the setup or a download fails.
#
#   Reports per scenario: total time (first start → last peer done), the Kumar–Ross lower
#   bound max(F/Us, F/d_min, N·F/(Us+ΣUi)) (for c: max(F/Us, a_last + F/d_min, N·F/(Us+ΣUi)),
#   a_last = the last arrival) and time/bound, the server's egress bytes (tx_bytes of its
#   veth, headers included), and per peer: duration, the agent's /metrics byte counters
#   (peer = any libp2p source, which includes the server's own seed node; server = HTTP from
#   the server) and the peer veth's rx/tx bytes. Writes bench-results/p2p-netns-<date>.md
#   (plus a .tsv of the raw per-peer figures) and prints the tables.
#
# TOPOLOGY (all inside namespaces this script creates; the root namespace is not touched)
#   ${NS_PREFIX}sw   "switch": a bridge br0 with one veth port per host
#   ${NS_PREFIX}srv  server, eth0 = ${SUBNET}.1
#   ${NS_PREFIX}pK   peer K, eth0 = ${SUBNET}.(10+K), its agent on 127.0.0.1:5001
#   Every veth has MTU 1280 (like a tailnet) and GSO limited to one segment, so the shapers
#   see real packets. Upload = the host side's egress (htb), download = the switch side's
#   egress towards the host (htb). A one-way delay of DELAY_MS is added on each host's egress
#   with netem when the kernel has it (RTT = 2·DELAY_MS); otherwise the report says so.
#
# ENV
#   FILE_MIB=200        size of the random store path (its zstd NAR file is F)
#   PEERS=4             N for scenarios a–c
#   SERVER_MBIT=20      server uplink (and downlink)
#   PEER_MBIT=100       each peer's uplink (and downlink)
#   DELAY_MS=5          one-way delay per host egress (netem; skipped if unavailable)
#   QUEUE_PKTS=200      leaf queue length in packets (pfifo/netem limit)
#   STAGGER=15          seconds between arrivals in scenario c
#   SCENARIOS="a b c d" which scenarios to run
#   P2P_TRANSPORTS="quic tcp"  libp2p listen transports of server and agents (first = tracker)
#   NS_PREFIX=tcp2p<pid>-      namespace name prefix (unique per run by default)
#   SUBNET=10.213.<pid%250>    first three octets of the /24 used on the veths
#   TAILCACHE_BIN=…     use this binary instead of `cargo build --release`
#   TAILCACHE_PROFILE=release  the cargo profile to build; `profiling` keeps symbols (for perf)
#   FETCH_TIMEOUT=1800  curl --max-time per download
#   COMPRESS_TIMEOUT=900 seconds to wait for the server's zstd file and its P2P manifest
#   AGENT_LOG=info      RUST_LOG of the agents; RUST_LOG of the server is SERVER_LOG=warn
#   LABEL=""            free text put in the report's title (e.g. the branch measured)
#   KEEP=1 / --keep     keep the temp dir (store, configs, logs)
#
# Everything listens on addresses inside the namespaces made here (127.0.0.1 of a namespace
# or ${SUBNET}.x on its veth). On exit (also on failure or Ctrl-C) every process started here
# is stopped and every namespace deleted. Nix runs with a private configuration; the
# machine's store and nix.conf are never touched.

set -euo pipefail

FILE_MIB=${FILE_MIB:-200}
PEERS=${PEERS:-4}
SERVER_MBIT=${SERVER_MBIT:-20}
PEER_MBIT=${PEER_MBIT:-100}
DELAY_MS=${DELAY_MS:-5}
QUEUE_PKTS=${QUEUE_PKTS:-200}
STAGGER=${STAGGER:-15}
SCENARIOS=${SCENARIOS:-a b c d}
P2P_TRANSPORTS=${P2P_TRANSPORTS:-quic tcp}
NS_PREFIX=${NS_PREFIX:-tcp2p$$-}
SUBNET=${SUBNET:-10.213.$(($$ % 250))}
FETCH_TIMEOUT=${FETCH_TIMEOUT:-1800}
COMPRESS_TIMEOUT=${COMPRESS_TIMEOUT:-900}
AGENT_LOG=${AGENT_LOG:-info}
SERVER_LOG=${SERVER_LOG:-warn}
LABEL=${LABEL:-}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/benches/lib.sh"
script_args "$@"

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces and tc)"
[[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "SUBNET must be three octets, e.g. 10.213.7"
[ "$PEERS" -ge 1 ] && [ "$PEERS" -le 200 ] || die "PEERS must be 1..200"
for t in ip tc curl sha256sum nix-build nix-hash awk; do
    command -v "$t" >/dev/null 2>&1 || die "missing tool: $t (Nix: apt-get install nix-bin)"
done

on_exit

# ------------------------------------------------------------------ workspace and binary
D=$(mktemp -d /tmp/tailcache-p2pbench.XXXXXX)
S=$D/store
mkdir -p "$D/conf" "$D/xdg-config" "$D/xdg-cache" "$D/src" "$D/runs"

tailcache_bin "$ROOT"

# ------------------------------------------------------------------ the store path
private_nix "$D"

log "building a ${FILE_MIB} MiB random store path in $S"
cat > "$D/src/path.nix" <<'EOF'
{ nonce, mib }:
builtins.derivation {
  name = "p2p-bench-blob"; inherit nonce; system = builtins.currentSystem;
  builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" "head -c ${toString (mib * 1048576)} /dev/urandom > $out" ];
}
EOF
nonce=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
BLOB=$(nix-build --store "$S" "$D/src/path.nix" --no-out-link --argstr nonce "$nonce" \
    --arg mib "$FILE_MIB" 2> "$D/build.log") || { tail -20 "$D/build.log" >&2; die "nix-build failed"; }
HASH=$(hash_of "$BLOB")
nix-store --generate-binary-cache-key p2p-bench-1 "$D/key.sec" "$D/key.pub"
chmod 600 "$D/key.sec"
PUBKEY=$(cat "$D/key.pub")

# ------------------------------------------------------------------ network
SW=${NS_PREFIX}sw
SRV=${NS_PREFIX}srv
SRV_IP=$SUBNET.1
peer_ns() { echo "${NS_PREFIX}p$1"; }
peer_ip() { echo "$SUBNET.$((10 + $1))"; }
# add_host NS IP MBIT PORT: the host's namespace, a veth to the switch, shaping both ways.
add_host() {
    local ns=$1 ip=$2 mbit=$3 port=$4
    ip netns add "$ns"
    NSS+=("$ns")
    ip -n "$ns" link set lo up
    ip -n "$SW" link add name "$port" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "$port" mtu 1280 gso_max_size 1280 gso_max_segs 1 master br0 up
    ip -n "$ns" link set eth0 mtu 1280 gso_max_size 1280 gso_max_segs 1 up
    ip -n "$ns" addr add "$ip/24" dev eth0
    shape "$ns" eth0 "$mbit" "$DELAY_MS"
    shape "$SW" "$port" "$mbit" 0
}

log "namespaces ${NS_PREFIX}{sw,srv,p1..p$PEERS}, subnet $SUBNET.0/24"
ip netns add "$SW"
NSS+=("$SW")
ip -n "$SW" link set lo up
ip -n "$SW" link add name br0 type bridge
ip -n "$SW" link set br0 mtu 1280 up
add_host "$SRV" "$SRV_IP" "$SERVER_MBIT" s-srv
for i in $(seq "$PEERS"); do
    add_host "$(peer_ns "$i")" "$(peer_ip "$i")" "$PEER_MBIT" "s-p$i"
done
[ "$NETEM" = unknown ] && NETEM=off

tx_bytes() { ip netns exec "$1" cat /sys/class/net/eth0/statistics/tx_bytes; }
rx_bytes() { ip netns exec "$1" cat /sys/class/net/eth0/statistics/rx_bytes; }

# listen_addrs IP → TOML list of libp2p listen multiaddrs (PORT 5002 for the server, 0 else).
listen_addrs() {
    local ip=$1 port=$2 t out=""
    for t in $P2P_TRANSPORTS; do
        case $t in
            quic) out="$out\"/ip4/$ip/udp/$port/quic-v1\", " ;;
            tcp) out="$out\"/ip4/$ip/tcp/$port\", " ;;
            *) die "unknown transport $t in P2P_TRANSPORTS" ;;
        esac
    done
    echo "[${out%, }]"
}

# ------------------------------------------------------------------ server
SERVER_PID=""
SERVER_URL=http://$SRV_IP:5000
cat > "$D/server.toml" <<EOF
state_dir = "$D/server-state"
[api]
bind = "127.0.0.1:0"
[cache]
bind = "$SRV_IP:5000"
store_root = "$S"
compression = "zstd"
compression_level = 3
secret_key_files = ["$D/key.sec"]
[p2p]
enable = true
listen = $(listen_addrs "$SRV_IP" 5002)
EOF

# start_server TAG: a fresh server process (the compressed file survives in its state dir);
# sets TRACKER and waits until the zstd file and its P2P manifest are served.
start_server() {
    local tag=$1 out=$D/runs/server-$1 i
    [ -n "$SERVER_PID" ] && stop_pid "$SERVER_PID"
    ip netns exec "$SRV" env NO_COLOR=1 RUST_LOG="$SERVER_LOG" "$BIN" serve --config "$D/server.toml" \
        > "$out.stdout" 2> "$out.stderr" &
    SERVER_PID=$!
    LIVE[$SERVER_PID]=1
    TRACKER=""
    for i in $(seq 300); do
        grep -q '^cache listening on ' "$out.stdout" && \
            TRACKER=$(sed -n 's/^p2p listening on //p' "$out.stdout" | head -1)
        [ -n "$TRACKER" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$out.stderr" >&2; die "server exited ($tag)"; }
        sleep 0.1
    done
    [ -n "$TRACKER" ] || die "server did not print its cache and p2p addresses ($tag)"
    local t0=$SECONDS
    while :; do
        if ip netns exec "$SRV" curl -sf "$SERVER_URL/$HASH.narinfo" -o "$D/narinfo" \
            && [ "$(narinfo_field "$D/narinfo" Compression)" = zstd ]; then
            NAR_URL=$(narinfo_field "$D/narinfo" URL)
            ip netns exec "$SRV" curl -sf -o /dev/null "$SERVER_URL/p2p/manifest/${NAR_URL#nar/}" && break
        fi
        [ $((SECONDS - t0)) -lt "$COMPRESS_TIMEOUT" ] || die "no zstd file with a P2P manifest after ${COMPRESS_TIMEOUT}s"
        sleep 1
    done
}

# ------------------------------------------------------------------ agents
declare -A AGENT_PID
# start_agent RUN I: peer I's agent with a fresh cache dir under RUN's directory.
start_agent() {
    local run=$1 i=$2 ns dir t0
    ns=$(peer_ns "$i")
    dir=$D/runs/$run/agent$i
    mkdir -p "$dir"
    cat > "$dir/agent.toml" <<EOF
[agent]
server = "$SERVER_URL"
tracker = "$TRACKER"
bind = "127.0.0.1:5001"
trusted_keys = ["$PUBKEY"]
reseed = true
metered = false
cache_dir = "$dir/cache"
listen = $(listen_addrs "$(peer_ip "$i")" 0)
EOF
    ip netns exec "$ns" env NO_COLOR=1 RUST_LOG="$AGENT_LOG" "$BIN" agent --config "$dir/agent.toml" \
        > "$dir/stdout" 2> "$dir/stderr" &
    AGENT_PID[$i]=$!
    LIVE[${AGENT_PID[$i]}]=1
    t0=$SECONDS
    until ip netns exec "$ns" curl -sf -o /dev/null http://127.0.0.1:5001/nix-cache-info; do
        kill -0 "${AGENT_PID[$i]}" 2>/dev/null || { cat "$dir/stderr" >&2; die "agent $i exited ($run)"; }
        [ $((SECONDS - t0)) -lt 60 ] || die "agent $i does not answer ($run)"
        sleep 0.1
    done
}

metric() { # FILE NAME → value (0 if absent)
    awk -v n="tailcache_agent_$2" '$1 == n { v = $2 } END { printf "%.0f", v + 0 }' "$1"
}

# ------------------------------------------------------------------ expected file
start_server setup
FILE_SIZE=$(narinfo_field "$D/narinfo" FileSize)
WANT_SHA=$(nix-hash --to-base16 --type sha256 "$(narinfo_field "$D/narinfo" FileHash | sed 's/^sha256://')")
[ ${#WANT_SHA} -eq 64 ] || die "cannot read the narinfo's FileHash"
cp "$D/narinfo" "$D/narinfo.server"
for i in $(seq "$PEERS"); do
    ip netns exec "$(peer_ns "$i")" curl -sf -m 10 -o /dev/null "$SERVER_URL/nix-cache-info" \
        || die "peer $i cannot reach the server at $SERVER_URL"
done
log "NAR file $NAR_URL: $FILE_SIZE B (NAR $(narinfo_field "$D/narinfo" NarSize) B), tracker $TRACKER"

# ------------------------------------------------------------------ one scenario
F=$FILE_SIZE
US=$(calc "print $SERVER_MBIT * 1e6 / 8")
UP=$(calc "print $PEER_MBIT * 1e6 / 8")
# bound N LAST_ARRIVAL → Kumar–Ross lower bound in seconds (d_min = the peers' downlink).
bound() {
    calc "n = $1; a = $2; b = $F / $US; c = a + $F / $UP; d = n * $F / ($US + n * $UP);
          m = b; if (c > m) m = c; if (d > m) m = d; printf \"%.1f\", m"
}

declare -A RES            # RES[run/key]
DETAIL=()                 # per-peer rows for the report
TSV=("run	peer	mode	start_s	duration_s	verified	agent_peer_bytes	agent_server_bytes	agent_uploaded_bytes	veth_rx_bytes	veth_tx_bytes")
FAILED=0

# client RUN I MODE DELAY: peer I fetches the narinfo and the NAR file (agent or server),
# after DELAY seconds (the arrival schedule of scenario c); writes RUN/clientI.
client() {
    local run=$1 i=$2 mode=$3 delay=$4 ns base dir t0 t1 sum st=ok url
    ns=$(peer_ns "$i")
    dir=$D/runs/$run
    base=$SERVER_URL
    [ "$mode" = agent ] && base=http://127.0.0.1:5001
    [ "$delay" = 0 ] || sleep "$delay"
    t0=$(now)
    if ip netns exec "$ns" curl -sSf --max-time 60 -o "$dir/narinfo$i" "$base/$HASH.narinfo" 2> "$dir/curl$i.err"; then
        cmp -s "$dir/narinfo$i" "$D/narinfo.server" || st=narinfo-differs
        url=$(narinfo_field "$dir/narinfo$i" URL)
        sum=$(set -o pipefail; ip netns exec "$ns" curl -sSf --max-time "$FETCH_TIMEOUT" "$base/$url" 2>> "$dir/curl$i.err" \
            | sha256sum | cut -d' ' -f1) || st=download-failed
        [ "$st" != ok ] || [ "$sum" = "$WANT_SHA" ] || st=sha256-mismatch
    else
        st=narinfo-failed
    fi
    t1=$(now)
    echo "$t0 $t1 $st" > "$dir/client$i"
}

# run_scenario RUN MODE N STAGGER: fresh server (+ agents), N clients, figures into RES.
run_scenario() {
    local run=$1 mode=$2 n=$3 stagger=$4 i pids=() tx0 tx1 start end last_arrival
    local -A rx0 txp0
    mkdir -p "$D/runs/$run"
    log "scenario $run: $n peer(s), $mode, arrivals every ${stagger}s"
    start_server "$run"
    if [ "$mode" = agent ]; then
        for i in $(seq "$n"); do start_agent "$run" "$i"; done
    fi
    tx0=$(tx_bytes "$SRV")
    for i in $(seq "$n"); do
        rx0[$i]=$(rx_bytes "$(peer_ns "$i")")
        txp0[$i]=$(tx_bytes "$(peer_ns "$i")")
    done
    start=$(now)
    for i in $(seq "$n"); do
        client "$run" "$i" "$mode" $(((i - 1) * stagger)) &
        pids+=("$!")
        LIVE[$!]=1
    done
    for i in "${pids[@]}"; do wait "$i" || true; unset "LIVE[$i]"; done
    tx1=$(tx_bytes "$SRV")
    end=0
    last_arrival=$(((n - 1) * stagger))
    for i in $(seq "$n"); do
        local f=$D/runs/$run/client$i t0 t1 st m=$D/runs/$run/metrics$i ap=0 as=0 au=0 rx tx
        read -r t0 t1 st < "$f" 2> /dev/null || { t0=$start; t1=$(now); st=no-result; }
        end=$(calc "x = ($t1 > $end) ? $t1 : $end; printf \"%.6f\", x")
        [ "$st" = ok ] || { FAILED=$((FAILED + 1)); log "  peer $i: $st ($(head -c 300 "$D/runs/$run/curl$i.err"))"; }
        if [ "$mode" = agent ]; then
            ip netns exec "$(peer_ns "$i")" curl -sf -o "$m" http://127.0.0.1:5001/metrics || : > "$m"
            ap=$(metric "$m" peer_bytes_total); as=$(metric "$m" server_bytes_total)
            au=$(metric "$m" uploaded_bytes)
        fi
        rx=$(( $(rx_bytes "$(peer_ns "$i")") - ${rx0[$i]} ))
        tx=$(( $(tx_bytes "$(peer_ns "$i")") - ${txp0[$i]} ))
        local s d
        s=$(calc "printf \"%.1f\", $t0 - $start"); d=$(calc "printf \"%.1f\", $t1 - $t0")
        TSV+=("$run	$i	$mode	$s	$d	$st	$ap	$as	$au	$rx	$tx")
        DETAIL+=("| $run | $i | $mode | $s | $d | $st | $(calc "printf \"%.1f\", $ap / 1048576") | $(calc "printf \"%.1f\", $as / 1048576") | $(calc "printf \"%.1f\", $au / 1048576") | $(calc "printf \"%.1f\", $rx / 1048576") | $(calc "printf \"%.1f\", $tx / 1048576") |")
    done
    RES[$run/n]=$n
    RES[$run/mode]=$mode
    RES[$run/time]=$(calc "printf \"%.1f\", $end - $start")
    RES[$run/bound]=$(bound "$n" "$last_arrival")
    RES[$run/egress]=$((tx1 - tx0))
    log "  $run: ${RES[$run/time]} s (bound ${RES[$run/bound]} s), server egress $(calc "printf \"%.1f\", $((tx1 - tx0)) / 1048576") MiB"
    if [ "$mode" = agent ]; then
        for i in $(seq "$n"); do stop_pid "${AGENT_PID[$i]}"; done
        # The agents' kept files: 1 × F each; drop them before the next run.
        rm -rf "$D/runs/$run"/agent*/cache
    fi
}

RUNS=()
for sc in $SCENARIOS; do
    case $sc in
        a) run_scenario a-http "http" "$PEERS" 0; RUNS+=(a-http) ;;
        b) run_scenario b-p2p agent "$PEERS" 0; RUNS+=(b-p2p) ;;
        c) run_scenario c-staggered agent "$PEERS" "$STAGGER"; RUNS+=(c-staggered) ;;
        d) run_scenario d-http http 1 0; run_scenario d-agent agent 1 0; RUNS+=(d-http d-agent) ;;
        *) die "unknown scenario $sc (a b c d)" ;;
    esac
done
stop_pid "$SERVER_PID"

# ------------------------------------------------------------------ report
mib() { calc "printf \"%.1f\", $1 / 1048576"; }
rows=()
for r in "${RUNS[@]}"; do
    t=${RES[$r/time]} b=${RES[$r/bound]} e=${RES[$r/egress]}
    rows+=("| $r | ${RES[$r/n]} | ${RES[$r/mode]} | $t | $b | $(calc "printf \"%.2f\", $t / $b") | $(mib "$e") | $(calc "printf \"%.2f\", $e / $F") |")
done
verdict() { if [ "$1" = 1 ]; then echo met; else echo "NOT met"; fi; }
goals=()
if [ -n "${RES[b-p2p/time]:-}" ]; then
    r=$(calc "printf \"%.2f\", ${RES[b-p2p/time]} / ${RES[b-p2p/bound]}")
    goals+=("- (b) P2P total within 1.25× of the bound: ${r}× → $(verdict "$(calc "print ($r <= 1.25)")")")
    r=$(calc "printf \"%.2f\", ${RES[b-p2p/egress]} / $F")
    goals+=("- (b) server egress ≤ 1.2×F: ${r}×F → $(verdict "$(calc "print ($r <= 1.2)")")")
fi
if [ -n "${RES[c-staggered/time]:-}" ]; then
    r=$(calc "printf \"%.2f\", ${RES[c-staggered/egress]} / $F")
    goals+=("- (c) server egress ≤ 1.2×F (same goal, staggered): ${r}×F → $(verdict "$(calc "print ($r <= 1.2)")")")
fi
if [ -n "${RES[d-agent/time]:-}" ]; then
    r=$(calc "printf \"%.3f\", ${RES[d-agent/time]} / ${RES[d-http/time]}")
    goals+=("- (d) N = 1 through the agent ≤ 1.05× plain HTTP: ${r}× → $(verdict "$(calc "print ($r <= 1.05)")")")
fi

mkdir -p "$ROOT/bench-results"
stamp=$(date +%Y-%m-%d-%H%M%S)
out=$ROOT/bench-results/p2p-netns-$stamp.md
printf '%s\n' "${TSV[@]}" > "${out%.md}.tsv"
bin_note=" (built from this checkout)"
[ -n "${TAILCACHE_BIN:-}" ] && bin_note=" (given by TAILCACHE_BIN: its source is whatever built it)"
case $NETEM in
    yes) delay_note="netem: ${DELAY_MS} ms one-way on each host's egress (RTT $((2 * DELAY_MS)) ms)" ;;
    no) delay_note="**no added delay: netem is not available in this kernel** (RTT = veth/bridge only, well under 1 ms)" ;;
    *) delay_note="no added delay (DELAY_MS=0)" ;;
esac
{
    echo "# P2P benchmark (network namespaces)${LABEL:+ — $LABEL} — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Binary $BIN$bin_note; script from $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -r)."
    echo "F = $F B ($(mib "$F") MiB zstd file of a ${FILE_MIB} MiB random path). Server up/down ${SERVER_MBIT} Mbit/s, $PEERS peers up/down ${PEER_MBIT} Mbit/s"
    echo "(htb on both ends of each veth, pfifo/netem leaf of $QUEUE_PKTS packets), MTU 1280, GSO off; $delay_note."
    echo "libp2p transports: $P2P_TRANSPORTS (tracker: $TRACKER). Scenario c: arrivals every ${STAGGER}s."
    echo "Time = first start → last peer done (narinfo + NAR, sha256 checked against FileHash). Bound = Kumar–Ross"
    echo "max(F/Us, a_last + F/d_min, N·F/(Us+ΣUi)) with a_last = last arrival (0 except c); TCP/IP headers at MTU 1280"
    echo "make even a perfect transfer ≈ 4% slower than F/rate. Egress = the server veth's tx_bytes (headers included)."
    echo
    echo "| scenario | N | via | time s | bound s | time/bound | server egress MiB | egress/F |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "Goals (reported, not asserted):"
    printf '%s\n' "${goals[@]+"${goals[@]}"}"
    echo
    echo "Per peer (MiB; agent counters: 'from peers' = any libp2p source, the server's seed node included; 'from server' = HTTP Range):"
    echo
    echo "| scenario | peer | via | start s | duration s | check | from peers | from server | uploaded | veth rx | veth tx |"
    echo "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${DETAIL[@]}"
} > "$out"
cat "$out"
log "written to $out"
[ "$FAILED" -eq 0 ] || die "$FAILED download(s) failed or did not verify"
