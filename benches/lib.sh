# benches/lib.sh — what the benchmark scripts share: log/die, the tailcache binary to measure
# (TAILCACHE_BIN or a fresh `cargo build --profile $TAILCACHE_PROFILE`, release by default), a
# private Nix configuration for throwaway chroot stores (no daemon, no substituters,
# signatures required), stopping what a run started and removing its temp dir, narinfo fields,
# nginx as a static binary cache, and tc shaping of a namespace's interface. Sourced, not run.

log() { printf '# %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# script_args "$@": the arguments every benchmark takes. `--keep` sets KEEP=1 (keep the work
# directory, as KEEP=1 in the environment does); `-h`/`--help` prints the script's header.
script_args() {
    KEEP=${KEEP:-0}
    case "${1:-}" in
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        "") ;;
        *) printf 'usage: %s [--keep]\n' "$0" >&2; exit 2 ;;
    esac
}

# tailcache_bin ROOT: sets BIN to TAILCACHE_BIN, or builds the binary of ROOT with the cargo
# profile TAILCACHE_PROFILE: `release` (default) is what users get; `profiling` is the same with
# debug line tables and symbols, for perf.
tailcache_bin() {
    local root=$1 profile=${TAILCACHE_PROFILE:-release} target_dir
    if [ -n "${TAILCACHE_BIN:-}" ]; then
        BIN=$TAILCACHE_BIN
    else
        log "cargo build --profile $profile"
        (cd "$root" && cargo build --profile "$profile" --locked --quiet --bin tailcache) || die "cargo build failed"
        target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps \
            | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
        BIN=$target_dir/$profile/tailcache
    fi
    [ -x "$BIN" ] || die "no tailcache binary at $BIN"
    BIN=$(readlink -f "$BIN")
}

# private_nix DIR [EXTRA_NIX_CONF_LINES]: a nix.conf under DIR/conf and the environment that
# makes Nix read only it (and keep its caches under DIR). A chroot store makes Nix build in
# a sandbox even with sandbox = false, so /bin/sh and its libraries are mapped in.
private_nix() {
    local dir=$1 extra=${2:-} p sandbox_paths=""
    mkdir -p "$dir/conf" "$dir/xdg-config" "$dir/xdg-cache"
    for p in /bin /sbin /usr /lib /lib64 /lib32 /libx32; do
        [ -e "$p" ] || continue
        if [ -L "$p" ]; then sandbox_paths="$sandbox_paths $p=$(readlink -f "$p")"
        else sandbox_paths="$sandbox_paths $p"; fi
    done
    cat > "$dir/conf/nix.conf" <<NIXCONF
build-users-group =
sandbox = false
sandbox-paths =$sandbox_paths
substituters =
trusted-public-keys =
require-sigs = true
experimental-features = nix-command
fsync-metadata = false
warn-dirty = false
$extra
NIXCONF
    : > "$dir/conf/empty.conf"
    export NIX_CONF_DIR=$dir/conf NIX_USER_CONF_FILES=$dir/conf/empty.conf
    export XDG_CONFIG_HOME=$dir/xdg-config XDG_CACHE_HOME=$dir/xdg-cache
    unset NIX_CONFIG NIX_REMOTE NIX_PATH NIX_STORE_DIR NIX_STATE_DIR 2>/dev/null || true
}

# remove_workdir DIR [KEEP]: removes a run's temp dir (builds leave read-only directories in the
# throwaway store), or with KEEP=1 (default: $KEEP) says where it is.
remove_workdir() {
    local dir=$1 keep=${2:-${KEEP:-0}}
    if [ -n "$dir" ] && [ -d "$dir" ]; then
        if [ "$keep" = 1 ]; then
            log "kept $dir"
        else
            chmod -R u+w "$dir" 2>/dev/null || true
            rm -rf "$dir"
        fi
    fi
}

# What a run leaves behind, for stop_started and cleanup_run: the pids of the processes it
# started (keys of LIVE: `LIVE[$!]=1` after each start), the network namespaces it made
# (NSS) and its work directory (D).
declare -A LIVE=()
NSS=()
D=""

# stop_started: stops every process whose pid is a key of the associative array LIVE, then
# whatever still runs in the namespaces listed in the array NSS (only the script started
# anything there), and deletes those namespaces. For EXIT traps.
stop_started() {
    local p ns
    for p in "${!LIVE[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${!LIVE[@]}"; do wait "$p" 2>/dev/null || true; done
    for ns in "${NSS[@]+"${NSS[@]}"}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    done
    for ns in "${NSS[@]+"${NSS[@]}"}"; do ip netns del "$ns" 2>/dev/null || true; done
}

# stop_pid PID: stops one process the run started, and forgets it.
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; unset "LIVE[$1]"; }

# cleanup_run: stop_started, then remove_workdir "$D".
cleanup_run() {
    stop_started
    remove_workdir "$D"
}

# on_exit [FUNCTION]: runs FUNCTION (default cleanup_run) when the script exits, also after a
# failure or Ctrl-C.
on_exit() {
    # shellcheck disable=SC2064 # the function's name is meant to be expanded now
    trap "${1:-cleanup_run}" EXIT
    trap 'exit 130' INT TERM
}

# await_line OUT ERR SED_RE PID WHAT: the first capture of SED_RE in the file OUT (a process's
# stdout), waiting up to 60 s; dies with the tail of ERR if process PID exits first.
await_line() {
    local out=$1 err=$2 re=$3 pid=$4 what=$5 i v
    for i in $(seq 600); do
        v=$(sed -n "s|$re|\1|p" "$out" | head -1)
        [ -n "$v" ] && { echo "$v"; return; }
        kill -0 "$pid" 2>/dev/null || { tail -20 "$err" >&2; die "$what exited"; }
        sleep 0.1
    done
    die "$what did not print '$re' within 60 s"
}

now() { date +%s.%N; }
calc() { awk "BEGIN { $1 }"; }
hash_of() { basename "$1" | cut -c1-32; }
narinfo_field() { sed -n "s/^$2: //p" "$1" | head -1; }

# wrk_narinfo_lua PATHS_FILE PREFIX: a wrk script asking for PREFIX/<hash>.narinfo of every store
# path listed in PATHS_FILE in turn (each wrk thread from its own starting point), whose `done`
# prints "RESULT <requests per second> <errors>" (errors: connect, read, write, non-2xx status,
# timeouts).
wrk_narinfo_lua() {
    local p
    echo 'local paths = {'
    while read -r p; do printf '  "%s/%s.narinfo",\n' "$2" "$(hash_of "$p")"; done < "$1"
    cat <<'LUA'
}
local counter = 0
setup = function(thread) counter = counter + 1; thread:set("start", counter * 97) end
local i
request = function()
  i = ((i or start or 0) % #paths) + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.1f %d\n", summary.requests / (summary.duration / 1e6),
    e.connect + e.read + e.write + e.status + e.timeout))
end
LUA
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 30000))
}

# nginx_conf DIR WWW LISTEN: DIR/nginx.conf serving the files under WWW on LISTEN
# (address:port), temp files and logs under DIR; the way a static binary cache is served.
nginx_conf() {
    local dir=$1 www=$2 listen=$3 user_line=""
    mkdir -p "$dir/tmp" "$dir/logs"
    # Workers default to `nobody`, which cannot read a 0700 temp dir.
    [ "$(id -u)" -eq 0 ] && user_line="user root;"
    cat > "$dir/nginx.conf" <<NGINX
$user_line
daemon off;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/client;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; application/x-xz xz; application/zstd zst; }
    default_type application/octet-stream;
    server {
        listen $listen;
        root $www;
    }
}
NGINX
}

# shape NS DEV MBIT DELAY_MS: htb at MBIT on DEV's egress in namespace NS (replacing what was
# there), below it netem with DELAY_MS one-way delay when the kernel has netem, else pfifo;
# leaf queues of QUEUE_PKTS packets. NETEM (unknown → yes/no) remembers whether netem works.
NETEM=unknown
shape() {
    local ns=$1 dev=$2 mbit=$3 delay=$4 err
    # `replace` cannot change an htb root in place: a re-shaped link starts from scratch.
    tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
    tc -n "$ns" qdisc add dev "$dev" root handle 1: htb default 10
    tc -n "$ns" class add dev "$dev" parent 1: classid 1:10 htb rate "${mbit}mbit" ceil "${mbit}mbit" quantum 1600
    if [ "$delay" != 0 ] && [ "$NETEM" != no ]; then
        if err=$(tc -n "$ns" qdisc add dev "$dev" parent 1:10 handle 10: netem delay "${delay}ms" limit "$QUEUE_PKTS" 2>&1); then
            NETEM=yes
            return
        fi
        NETEM=no
        log "netem is not available (${err%%$'\n'*}): links have no added delay"
    fi
    tc -n "$ns" qdisc add dev "$dev" parent 1:10 handle 10: pfifo limit "$QUEUE_PKTS"
}
