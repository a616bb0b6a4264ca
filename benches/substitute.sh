#!/usr/bin/env bash
# substitute.sh — end-to-end benchmark of what the person waits for: stock Nix substituting a
# whole closure (`nix copy --from URL` into a fresh store, client decompression included) from
# tailcache (none / zstd / xz), through `tailcache agent`, and from nginx serving the same
# closure as a `nix copy --to file://` cache (the static limit), on loopback and on shaped links.
#
# USAGE
#   benches/substitute.sh [--keep]          (root for the shaped links; loopback runs without)
#
#   1. Builds, with real Nix in a throwaway chroot store, a closure of PATHS store paths and
#      about CLOSURE_MIB MiB: ELF binaries and libraries copied from this machine's /usr (with
#      /usr/lib/chromium as one big path when it fits), text and other data from /usr/share,
#      /usr/include and Python's library, and incompressible data (AES-CTR of a seed), with
#      references between the paths (a DAG, and a top path referring to all, like a system).
#      The choice of files and the data are seeded (SEED): the same machine gives the same
#      closure.
#   2. Writes the nginx caches with `nix copy --to file://…?compression=none|zstd|xz`.
#   3. For each compression tailcache serves (zstd, xz): starts a server with a fresh state
#      directory and a build whose only step prints the closure's top path (so, as after a
#      real build, the server is told about the new closure), triggers it with the CLI, and
#      polls every narinfo until all advertise the compressed file: "servable compressed".
#   4. For each link in LINKS, starts the servers (tailcache per compression, reusing the
#      state directories of 3; nginx) and, ROUNDS times, every configuration in CONFIGS in an
#      order rotated per round, runs `nix copy --from URL --to <fresh store> <top path>` with
#      `require-sigs` and the default `http-connections`, timed from start to done.
#      A run counts only if nix copy succeeded and the new store holds the whole closure;
#      anything else is reported FAILED, never as a time.
#
#   Configurations: nginx-none nginx-zstd nginx-xz (static files), tc-none tc-zstd tc-xz
#   (tailcache serving that encoding), agent (`tailcache agent` on the client, in front of the
#   tailcache-AGENT_SERVER instance, which runs its P2P tracker; no other peers). Each run
#   starts a new agent with an empty cache; from round 2 on a link it starts with the
#   measurements.toml the previous agent wrote (its goodput on that link, its decoding
#   speeds), as a person's agent, long running or restarted, would.
#   Links: lo (loopback, 127.0.0.1), or a rate in Mbit/s: server and client in two network
#   namespaces made here, joined by one veth with MTU MTU (GSO off) shaped by htb in both
#   directions, plus a DELAY_MS one-way netem delay when the kernel has netem.
#
#   Prints, per link, the median time, bytes and client CPU of each configuration with their
#   ratios to nginx-zstd in the same run; the time to servable-compressed per compression;
#   writes bench-results/substitute-<date>.md and .tsv (one row per run). Times are reported,
#   never asserted: the exit status is non-zero when the setup or a run fails.
#   Bytes: on a shaped link, the client veth's rx_bytes (all that came down the link, TCP/IP
#   headers included); on loopback, the bytes the server processes wrote (/proc/PID/io wchar:
#   HTTP responses, no TCP/IP headers). Client CPU: user+sys of the nix copy process tree
#   (/usr/bin/time), plus for `agent` the agent's own CPU during the run.
#
# ENV
#   CLOSURE_MIB=1536   closure size (NAR bytes, approximately)
#   PATHS=300          store paths in the closure (the top path included)
#   TEXT_PCT=25        share of text/data files from /usr/share, /usr/include …
#   RANDOM_PCT=10      share of incompressible data (the rest: ELF binaries and libraries)
#   SEED=1             seed of the file choice, the sizes, the references and the random data
#   ROUNDS=2           rounds over every configuration on every link
#   LINKS="lo 100 20"  links: lo and/or rates in Mbit/s (the rates need root); empty: none
#                      (only the time to servable compressed)
#   CONFIGS="nginx-none nginx-zstd nginx-xz tc-none tc-zstd tc-xz agent"
#   AGENT_SERVER=zstd  which tailcache instance the agent fronts (none | zstd | xz)
#   MEASURE_SERVABLE="zstd xz"   the compressions whose time to servable is measured (from
#                      an empty state directory); the others keep the state a run in the same
#                      WORK_DIR left (MEASURE_SERVABLE=zstd reruns links without xz's minutes per GB)
#   DELAY_MS=5         one-way delay on each end of a shaped link (netem; skipped if missing)
#   MTU=1280           MTU of the shaped link (a tailnet's)
#   QUEUE_PKTS=200     leaf queue length of the shaper, in packets
#   TC_CACHE_CONF=""   extra lines for the servers' [cache] table (e.g. "compression_level = 3");
#                      with archive_compression = "xz" (or "zstd"), step 3 also times until every
#                      path's archive file is made (GET /p2p/files/<hash> lists it)
#   AGENT_CONF=""      extra lines for the agent's [agent] table
#   AGENT_ARCHIVE=xz   archive_compression of the agent's instance alone (none: off), so the
#                      agent can choose between its primary file, the archive file and the NAR
#   TAILCACHE_BIN=…    the binary to measure (default: `cargo build --release` of this checkout)
#   WORK_DIR=…         work directory; when it holds a closure (and nginx caches) from an
#                      earlier run with the same settings, they are reused; never deleted
#   CLIENT_DIR=/dev/shm  where a fresh directory for each run's client store (and the agent's
#                      cache) is made: tmpfs by default (WORK_DIR/client without /dev/shm). On ext4,
#                      creating the closure's files right after the previous run deleted as
#                      many makes the inode allocator skip recently freed inodes: the client's
#                      system time then swings 1.5–8 s between identical runs of 257 MiB
#                      (perf: `recently_deleted` under `ext4_create`), which would be measured
#                      instead of the transfer
#   FETCH_TIMEOUT=7200 seconds allowed for one nix copy
#   COMPRESS_TIMEOUT=3600 seconds allowed for a closure to become servable compressed
#   NS_PREFIX=tcsub<pid>-      namespace name prefix (unique per run by default)
#   SUBNET=10.214.<pid%250>    first three octets of the /24 on the veth
#   SERVER_LOG=warn / AGENT_LOG=warn   RUST_LOG of the servers and of the agent
#   LABEL=""           free text for the report's title (e.g. the branch measured)
#   KEEP=1 / --keep    keep the work directory (stores, caches, logs)
#
# Everything listens on 127.0.0.1 or on the veth inside namespaces made here; the root
# namespace's interfaces are never touched. On exit (also on failure or Ctrl-C) every process
# started here is stopped, the namespaces deleted and the work directory removed (unless
# --keep or WORK_DIR). Nix runs with a private configuration; the machine's store and
# nix.conf are never touched. Disk: about 4× CLOSURE_MIB in the work directory.

set -euo pipefail

CLOSURE_MIB=${CLOSURE_MIB:-1536}
PATHS=${PATHS:-300}
TEXT_PCT=${TEXT_PCT:-25}
RANDOM_PCT=${RANDOM_PCT:-10}
SEED=${SEED:-1}
ROUNDS=${ROUNDS:-2}
LINKS=${LINKS-lo 100 20}
CONFIGS=${CONFIGS:-nginx-none nginx-zstd nginx-xz tc-none tc-zstd tc-xz agent}
AGENT_SERVER=${AGENT_SERVER:-zstd}
MEASURE_SERVABLE=${MEASURE_SERVABLE-zstd xz}
DELAY_MS=${DELAY_MS:-5}
MTU=${MTU:-1280}
QUEUE_PKTS=${QUEUE_PKTS:-200}
TC_CACHE_CONF=${TC_CACHE_CONF:-}
AGENT_CONF=${AGENT_CONF:-}
AGENT_ARCHIVE=${AGENT_ARCHIVE:-xz}
FETCH_TIMEOUT=${FETCH_TIMEOUT:-7200}
COMPRESS_TIMEOUT=${COMPRESS_TIMEOUT:-3600}
NS_PREFIX=${NS_PREFIX:-tcsub$$-}
SUBNET=${SUBNET:-10.214.$(($$ % 250))}
SERVER_LOG=${SERVER_LOG:-warn}
AGENT_LOG=${AGENT_LOG:-warn}
LABEL=${LABEL:-}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/benches/lib.sh"
script_args "$@"

# ------------------------------------------------------------------ arguments and tools
[[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "SUBNET must be three octets, e.g. 10.214.7"
[[ "$PATHS" =~ ^[0-9]+$ ]] && [ "$PATHS" -ge 5 ] || die "PATHS must be a number ≥ 5"
[[ "$CLOSURE_MIB" =~ ^[0-9]+$ ]] && [ "$CLOSURE_MIB" -ge 1 ] || die "CLOSURE_MIB must be a positive number"
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 1 ] || die "ROUNDS must be ≥ 1"
[ $((TEXT_PCT + RANDOM_PCT)) -lt 100 ] || die "TEXT_PCT + RANDOM_PCT must stay below 100"
case $AGENT_SERVER in none|zstd|xz) ;; *) die "AGENT_SERVER must be none, zstd or xz" ;; esac
for c in $CONFIGS; do
    case $c in nginx-none|nginx-zstd|nginx-xz|tc-none|tc-zstd|tc-xz|agent) ;;
        *) die "unknown configuration $c (nginx-none nginx-zstd nginx-xz tc-none tc-zstd tc-xz agent)" ;;
    esac
done
IS_ROOT=0; [ "$(id -u)" -eq 0 ] && IS_ROOT=1
SHAPED=()
for l in $LINKS; do
    case $l in
        lo) ;;
        *[!0-9]*|"") die "unknown link $l (lo or a rate in Mbit/s)" ;;
        *) SHAPED+=("$l") ;;
    esac
done
for t in nix nix-build nix-store curl python3 tar openssl /usr/bin/time awk; do
    command -v "$t" >/dev/null 2>&1 || die "missing tool: $t"
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "missing tool: nginx"
[ ${#SHAPED[@]} -eq 0 ] || [ "$IS_ROOT" = 0 ] || command -v tc >/dev/null 2>&1 || die "missing tool: tc (iproute2)"

# Which tailcache instances the configurations need.
COMPS=()
for c in none zstd xz; do
    case " $CONFIGS " in
        *" tc-$c "*) COMPS+=("$c") ;;
        *" agent "*) [ "$AGENT_SERVER" = "$c" ] && COMPS+=("$c") ;;
    esac
done

# ------------------------------------------------------------------ cleanup
OWN_D=0
CLIENT=""
cleanup() {
    stop_started
    # Client stores are per run and large: never left behind, even in a kept directory.
    [ -n "$CLIENT" ] && [ -d "$CLIENT" ] && remove_workdir "$CLIENT" 0
    if [ "$OWN_D" = 1 ]; then remove_workdir "$D" "$KEEP"; else remove_workdir "$D" 1; fi
}
on_exit cleanup

START=$(now)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -n "${WORK_DIR:-}" ]; then
    mkdir -p "$WORK_DIR"
    D=$(cd "$WORK_DIR" && pwd)
else
    D=$(mktemp -d /tmp/tailcache-substitute.XXXXXX)
    OWN_D=1
fi
S=$D/store
CLIENT_PARENT=${CLIENT_DIR:-/dev/shm}
if [ -d "$CLIENT_PARENT" ] && [ -w "$CLIENT_PARENT" ]; then
    CLIENT=$(mktemp -d "$CLIENT_PARENT/tailcache-substitute-client.XXXXXX")
else
    [ -z "${CLIENT_DIR:-}" ] || die "CLIENT_DIR=$CLIENT_DIR is not a writable directory"
    CLIENT=$D/client
fi
mkdir -p "$D/closure" "$D/runs"
rm -rf "$D/runs"/* "$D/servable" "$D"/measurements-*.toml
mkdir -p "$D/servable"

tailcache_bin "$ROOT"
private_nix "$D" $'max-jobs = 2'

# ------------------------------------------------------------------ 1. the closure
# plan_closure: writes $D/closure/closure.nix (one derivation per store path) from this
# machine's files, deterministically for a given SEED, and prints a one-line summary.
plan_closure() {
    python3 - "$SEED" "$CLOSURE_MIB" "$PATHS" "$TEXT_PCT" "$RANDOM_PCT" "$D/closure/closure.nix" <<'PY'
import math, os, random, re, stat, sys

seed, mib, npaths, text_pct, random_pct, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rng = random.Random(seed)
total = mib << 20
budget = {"rand": total * random_pct // 100, "text": total * text_pct // 100}
budget["elf"] = total - budget["rand"] - budget["text"]
# Names that need no quoting in a Nix string or a tar file list.
SAFE = re.compile(r"^/usr/[A-Za-z0-9._+@,=:~/-]+$")
seen = set()

def walk(roots, want_elf):
    """Regular readable files under roots, grouped by directory (groups shuffled)."""
    groups = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                if not SAFE.match(p):
                    continue
                try:
                    st = os.lstat(p)
                    if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or (st.st_dev, st.st_ino) in seen:
                        continue
                    with open(p, "rb") as f:
                        elf = f.read(4) == b"\x7fELF"
                except OSError:
                    continue
                if elf != want_elf:
                    continue
                seen.add((st.st_dev, st.st_ino))
                groups.setdefault(dirpath, []).append((p, st.st_size))
    keys = sorted(groups)
    rng.shuffle(keys)
    return [f for k in keys for f in groups[k]]

def existing(*globs):
    import glob
    return [d for g in globs for d in sorted(glob.glob(g)) if os.path.isdir(d) and not os.path.islink(d)]

def targets(n, b):
    """n sizes summing to b, log-uniform over a factor of 300 (a few big paths, many small)."""
    w = [math.exp(rng.uniform(0, math.log(300))) for _ in range(n)]
    s = sum(w)
    return [int(b * x / s) for x in w]

def fill(pool, sizes, b):
    """Consecutive files of pool into paths of about the given sizes, within budget b."""
    paths, i, left = [], 0, b
    for t in sizes:
        files, size = [], 0
        while i < len(pool) and size < t:
            p, s = pool[i]
            i += 1
            if s <= left - size:
                files.append(p)
                size += s
        left -= size
        paths.append((files, size))
    return paths, b - left

n_rand = max(1, round(npaths * 0.07))
n_text = max(1, round(npaths * 0.30))
n_elf = npaths - 1 - n_rand - n_text
assert n_elf >= 1

# The big application: a browser's directory as one path, as in a real system closure.
big = []
chromium = walk(existing("/usr/lib/chromium"), True) + walk(existing("/usr/lib/chromium"), False)
if chromium and n_elf >= 2 and sum(s for _, s in chromium) <= budget["elf"] * 0.45:
    big = [(sorted(p for p, _ in chromium), sum(s for _, s in chromium))]
    n_elf -= 1
    budget["elf"] -= big[0][1]
elf_pool = walk(existing("/usr/lib", "/usr/bin", "/usr/sbin", "/usr/libexec"), True)
text_pool = walk(existing("/usr/include", "/usr/share", "/usr/lib/python3*"), False)
elf, elf_got = fill(elf_pool, targets(n_elf, budget["elf"]), budget["elf"])
text, text_got = fill(text_pool, targets(n_text, budget["text"]), budget["text"])
rand_sizes = targets(n_rand, budget["rand"])

# Order: libraries, the big application, data, text; each path refers to a few earlier ELF
# paths (a DAG: bottom libraries, then what links against them), the top path to all.
nodes = []  # (kind, files, random_bytes)
nodes += [("lib", f, 0) for f, _ in elf] + [("app", f, 0) for f, _ in big]
nodes += [("data", [], s) for s in rand_sizes] + [("share", f, 0) for f, _ in text]
n_elf_nodes = len(elf) + len(big)
refs = []
for i, (kind, _, _) in enumerate(nodes):
    cands = list(range(min(i, n_elf_nodes)))
    k = {"lib": 3, "app": 6, "data": 1, "share": 1}[kind]
    k = min(len(cands), rng.randint(0, k))
    refs.append(sorted(rng.sample(cands, k)))

def nix_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'

with open(out, "w") as f:
    f.write("# Generated by benches/substitute.sh (seed %s): the benchmark's closure.\n" % seed)
    f.write("let\n  mk = name: attrs: builtins.derivation ({\n"
            "    inherit name; system = builtins.currentSystem; builder = \"/bin/sh\";\n"
            "    PATH = \"/usr/bin:/bin\"; OPENSSL_CONF = \"/dev/null\";\n"
            "    files = \"\"; randomBytes = 0; seed = \"\"; deps = [ ]; passAsFile = [ \"files\" ];\n"
            "    args = [ \"-c\" ''\n"
            "      set -e\n"
            "      mkdir -p $out/nix-support\n"
            "      if [ -s \"$filesPath\" ]; then tar -C /usr -cf - -T \"$filesPath\" | tar -C $out -xf -; fi\n"
            "      if [ \"$randomBytes\" -gt 0 ]; then\n"
            "        mkdir -p $out/share/data\n"
            "        openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass \"pass:$seed\" -in /dev/zero 2>/dev/null \\\n"
            "          | head -c \"$randomBytes\" > $out/share/data/blob.bin\n"
            "      fi\n"
            "      for d in $deps; do echo \"$d\"; done > $out/nix-support/references\n"
            "    '' ];\n  } // attrs);\n")
    for i, (kind, files, rnd) in enumerate(nodes):
        name = "%s-%03d" % (kind, i)
        deps = " ".join("p%d" % j for j in refs[i])
        rel = "\n".join(p[len("/usr/"):] for p in files)
        f.write("  p%d = mk %s { files = %s; randomBytes = %d; seed = %s; deps = [ %s ]; };\n"
                % (i, nix_str(name), nix_str(rel), rnd, nix_str("%s-%d" % (seed, i)), deps))
    f.write("in mk \"system\" { deps = [ %s ]; }\n" % " ".join("p%d" % i for i in range(len(nodes))))
files = sum(len(n[1]) for n in nodes)
print("%d paths, %d files: ELF %.0f MiB (%s), text/data %.0f MiB, random %.0f MiB" % (
    len(nodes) + 1, files, (elf_got + sum(s for _, s in big)) / 2**20,
    "with /usr/lib/chromium" if big else "no chromium", text_got / 2**20, sum(rand_sizes) / 2**20))
short = [k for k, want, got in (("ELF", budget["elf"], elf_got), ("text", budget["text"], text_got)) if got < want * 0.9]
if short:
    print("warning: not enough %s files on this machine for the requested size" % " and ".join(short), file=sys.stderr)
PY
}

SETTINGS="seed=$SEED mib=$CLOSURE_MIB paths=$PATHS text=$TEXT_PCT random=$RANDOM_PCT"
if [ -s "$D/closure/top" ] && [ "$(cat "$D/closure/settings" 2>/dev/null)" = "$SETTINGS" ] \
    && nix-store --store "$S" --check-validity "$(cat "$D/closure/top")" 2>/dev/null; then
    log "reusing the closure in $D"
else
    remove_workdir "$S" 0
    rm -rf "$D/www" "$D/tc"
    rm -f "$D/closure/top"
    log "planning a closure of $PATHS paths, ~$CLOSURE_MIB MiB (seed $SEED)"
    plan_closure > "$D/closure/summary"
    log "  $(cat "$D/closure/summary")"
    log "building it with Nix in $S"
    t0=$SECONDS
    nix-build --store "$S" "$D/closure/closure.nix" --no-out-link > "$D/closure/top.new" 2> "$D/closure/build.log" \
        || { tail -20 "$D/closure/build.log" >&2; die "nix-build failed"; }
    mv "$D/closure/top.new" "$D/closure/top"
    echo "$SETTINGS" > "$D/closure/settings"
    log "  built in $((SECONDS - t0)) s"
fi
TOP=$(cat "$D/closure/top")
nix-store --store "$S" -qR "$TOP" | sort > "$D/closure/paths"
NPATHS=$(wc -l < "$D/closure/paths")
NAR_BYTES=$(nix path-info --store "$S" -rs "$TOP" | awk '{ s += $2 } END { printf "%.0f", s }')
log "closure: $NPATHS paths, NAR $(calc "printf \"%.1f\", $NAR_BYTES / 1048576") MiB, top $TOP"

if [ ! -s "$D/key.sec" ]; then
    nix-store --store "$S" --generate-binary-cache-key substitute-bench-1 "$D/key.sec" "$D/key.pub"
    chmod 600 "$D/key.sec"
fi
PUBKEY=$(cat "$D/key.pub")

# ------------------------------------------------------------------ 2. nginx's files
declare -A NGX_COPY_S=()
for c in none zstd xz; do
    case " $CONFIGS " in *" nginx-$c "*) ;; *) continue ;; esac
    if [ -e "$D/www/$c/.complete" ]; then
        log "reusing $D/www/$c"
        continue
    fi
    rm -rf "$D/www/$c"
    log "nix copy --to file://…/www/$c?compression=$c"
    t0=$SECONDS
    nix copy --from "$S" --to "file://$D/www/$c?compression=$c&secret-key=$D/key.sec" "$TOP" \
        2> "$D/www-$c.log" || { tail "$D/www-$c.log" >&2; die "nix copy to file://…/$c failed"; }
    NGX_COPY_S[$c]=$((SECONDS - t0))
    touch "$D/www/$c/.complete"
    log "  written in ${NGX_COPY_S[$c]} s"
done

# ------------------------------------------------------------------ servers
# The place servers run in: lo (this namespace, 127.0.0.1) or the server namespace.
SRV=${NS_PREFIX}srv
CLI=${NS_PREFIX}cli
SRV_IP=$SUBNET.1
CLI_IP=$SUBNET.2
PLACE=""
HOST=""
SRV_EXEC=()
CLI_EXEC=()
declare -A TC_URL=() TC_PID=()
TRACKER=""
NGINX_PID=""
NGINX_URL=""
POLL=$D/poll

# tc_config COMP IP: a server configuration serving COMP on IP (port 0), with a build whose
# only step prints the closure's top path (capture = out-paths: the server is told about the
# closure as after a real build) and, for the agent's instance, the P2P tracker.
# agent_archive_line COMP: the [cache] line that turns the archive on for the agent's instance.
agent_archive_line() {
    if [ "$1" = "$AGENT_SERVER" ] && [[ " $CONFIGS " == *" agent "* ]] \
        && [ "$AGENT_ARCHIVE" != none ] && [ "$AGENT_ARCHIVE" != "$1" ]; then
        printf 'archive_compression = "%s"\n' "$AGENT_ARCHIVE"
    fi
}

# archive_of COMP: the archive compression of that instance's config ("" when off).
archive_of() {
    sed -n 's/^ *archive_compression *= *"\(xz\|zstd\)".*/\1/p' "$D/tc/$1/config.toml" | head -1
}

tc_config() {
    local c=$1 ip=$2 dir=$D/tc/$1
    mkdir -p "$dir"
    cat > "$dir/config.toml" <<EOF
state_dir = "$dir/state"
[api]
bind = "127.0.0.1:0"
[cache]
bind = "$ip:0"
store_root = "$S"
compression = "$c"
secret_key_files = ["$D/key.sec"]
$TC_CACHE_CONF
$(agent_archive_line "$c")
[[build.steps]]
name = "build"
program = "/bin/sh"
args = ["-c", "cat $D/closure/top"]
capture = "out-paths"
EOF
    if [ "$c" = "$AGENT_SERVER" ] && [[ " $CONFIGS " == *" agent "* ]]; then
        printf '[p2p]\nenable = true\nlisten = ["/ip4/%s/tcp/0"]\n' "$ip" >> "$dir/config.toml"
    fi
}

# start_tc COMP: starts the instance for COMP in the current place; sets TC_URL, TC_PID,
# TC_API (its build API) and, for the agent's instance, TRACKER.
start_tc() {
    local c=$1 dir=$D/tc/$1 pid url api
    tc_config "$c" "$HOST"
    # Emptied here, not by the redirection below: that happens in the background child, and
    # await_line could meanwhile read the address an earlier instance printed.
    : > "$dir/stdout"
    "${SRV_EXEC[@]}" env NO_COLOR=1 RUST_LOG="$SERVER_LOG" "$BIN" serve --config "$dir/config.toml" \
        > "$dir/stdout" 2> "$dir/stderr" &
    pid=$!
    LIVE[$pid]=1
    url=$(await_line "$dir/stdout" "$dir/stderr" '^cache listening on \(http://[0-9.]*:[0-9]*\)$' "$pid" "tailcache ($c)")
    api=$(await_line "$dir/stdout" "$dir/stderr" '^api listening on \(http://[0-9.]*:[0-9]*\)$' "$pid" "tailcache ($c)")
    if grep -q '^\[p2p\]' "$dir/config.toml"; then
        TRACKER=$(await_line "$dir/stdout" "$dir/stderr" '^p2p listening on \(.*\)$' "$pid" "tailcache ($c)")
    fi
    TC_URL[$c]=$url
    TC_PID[$c]=$pid
    TC_API=$api
}

# poll_each BASE URL_PATTERN: fetches BASE/<URL_PATTERN with %s = each path's hash> for every
# path of the closure into $POLL/<hash> (one curl, keep-alive); prints how many were answered.
poll_each() {
    local base=$1 pattern=$2 p h
    rm -rf "$POLL"
    mkdir -p "$POLL"
    while read -r p; do
        h=$(hash_of "$p")
        # shellcheck disable=SC2059 # the pattern is ours: one %s
        printf "url = \"%s/$pattern\"\noutput = \"%s/%s\"\n" "$base" "$h" "$POLL" "$h"
    done < "$D/closure/paths" > "$D/poll.curl"
    "${CLI_EXEC[@]}" curl -sf --max-time 60 -K "$D/poll.curl" || true
    find "$POLL" -type f | wc -l
}

# poll_narinfos BASE: every narinfo of the closure from BASE into $POLL/.
poll_narinfos() { poll_each "$1" '%s.narinfo'; }

# servable_count COMP BASE: narinfos of the closure that BASE serves and that advertise COMP.
servable_count() {
    local n
    n=$(poll_narinfos "$2")
    [ "$n" -gt 0 ] || { echo 0; return; }
    # grep finds nothing before the first file is made: not a failure (pipefail).
    { grep -lx "Compression: $1" "$POLL"/* 2>/dev/null || true; } | wc -l
}

# wait_servable COMP BASE: until every narinfo advertises COMP; prints the seconds waited.
wait_servable() {
    local c=$1 base=$2 t0 n=0
    t0=$(now)
    while :; do
        n=$(servable_count "$c" "$base")
        [ "$n" -eq "$NPATHS" ] && break
        calc "exit !($(now) - $t0 > $COMPRESS_TIMEOUT)" \
            && die "$base: $n of $NPATHS narinfos advertise $c after ${COMPRESS_TIMEOUT}s"
        sleep 0.1
    done
    calc "printf \"%.1f\", $(now) - $t0"
}

# file_bytes: sum of FileSize (NarSize where absent) of the narinfos last polled.
file_bytes() {
    awk 'function add() { s += (f != "" ? f : n); f = ""; n = "" }
         FNR == 1 && NR > 1 { add() } /^FileSize: / { f = $2 } /^NarSize: / { n = $2 }
         END { add(); printf "%.0f", s }' "$POLL"/*
}

# archive_count COMP BASE: paths of the closure whose files (GET BASE/p2p/files/<hash>, one
# curl into $POLL/) include one in COMP.
archive_count() {
    poll_each "$2" 'p2p/files/%s' > /dev/null
    { grep -l "\"compression\":\"$1\"" "$POLL"/* 2>/dev/null || true; } | wc -l
}

# wait_archived COMP BASE: until every path of the closure has its COMP archive file; then
# prints the bytes of those files (from the lists last polled).
wait_archived() {
    local c=$1 base=$2 t0=$SECONDS n
    while :; do
        n=$(archive_count "$c" "$base")
        [ "$n" -eq "$NPATHS" ] && break
        [ $((SECONDS - t0)) -lt "$COMPRESS_TIMEOUT" ] || die "$base: $n of $NPATHS archive files ($c) after ${COMPRESS_TIMEOUT}s"
        sleep 0.5
    done
    python3 - "$c" "$POLL" <<'PY'
import json, os, sys
c, d = sys.argv[1], sys.argv[2]
print(sum(f["file_size"] for n in os.listdir(d)
          for f in json.load(open(os.path.join(d, n)))["files"] if f["compression"] == c))
PY
}

# wait_manifests BASE: until the server has a P2P manifest for every NAR file of the closure.
wait_manifests() {
    local base=$1 t0=$SECONDS f u missing
    while :; do
        poll_narinfos "$base" > /dev/null
        missing=0
        for f in "$POLL"/*; do
            u=$(narinfo_field "$f" URL)
            [ "$(narinfo_field "$f" Compression)" = none ] && continue
            "${CLI_EXEC[@]}" curl -sf -o /dev/null "$base/p2p/manifest/${u#nar/}" || missing=$((missing + 1))
        done
        [ "$missing" -eq 0 ] && return
        [ $((SECONDS - t0)) -lt "$COMPRESS_TIMEOUT" ] || die "$missing P2P manifests missing after ${COMPRESS_TIMEOUT}s"
        sleep 1
    done
}

# ------------------------------------------------------------------ 3. servable compressed
# cpu_ticks PID: user+sys clock ticks of a running process so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)
declare -A SERVABLE=() SERVABLE_BYTES=() SERVABLE_P2P=() SERVABLE_CPU=()
declare -A ARCHIVED=() ARCHIVED_BYTES=() ARCHIVED_CPU=()
PLACE=lo HOST=127.0.0.1
for c in "${COMPS[@]+"${COMPS[@]}"}"; do
    [ "$c" = none ] && continue
    case " $MEASURE_SERVABLE " in *" $c "*) ;; *) continue ;; esac
    log "tailcache $c: time from the build's end to the whole closure servable compressed"
    rm -rf "$D/tc/$c/state"
    start_tc "$c"
    # The build's only step prints the top path: it ends within milliseconds of the trigger.
    t0=$(now)
    c0=$(cpu_ticks "${TC_PID[$c]}")
    "$BIN" trigger --server "$TC_API" --wait > "$D/servable/trigger-$c.log" 2>&1 \
        || { cat "$D/servable/trigger-$c.log" >&2; die "the build on tailcache ($c) did not succeed"; }
    wait_servable "$c" "${TC_URL[$c]}" > /dev/null
    SERVABLE[$c]=$(calc "printf \"%.1f\", $(now) - $t0")
    # The server's CPU (all threads) meanwhile: what the closure costs on an idle machine.
    SERVABLE_CPU[$c]=$(calc "printf \"%.1f\", ($(cpu_ticks "${TC_PID[$c]}") - $c0) / $CLK_TCK")
    SERVABLE_BYTES[$c]=$(file_bytes)
    if grep -q '^\[p2p\]' "$D/tc/$c/config.toml"; then
        wait_manifests "${TC_URL[$c]}"
        SERVABLE_P2P[$c]=$(calc "printf \"%.1f\", $(now) - $t0")
    fi
    log "  servable compressed ${SERVABLE[$c]} s after the build; files $(calc "printf \"%.1f\", ${SERVABLE_BYTES[$c]} / 1048576") MiB"
    ARCHIVE=$(archive_of "$c")
    if [ -n "$ARCHIVE" ]; then
        ARCHIVED_BYTES[$c]=$(wait_archived "$ARCHIVE" "${TC_URL[$c]}")
        ARCHIVED[$c]=$(calc "printf \"%.1f\", $(now) - $t0")
        ARCHIVED_CPU[$c]=$(calc "printf \"%.1f\", ($(cpu_ticks "${TC_PID[$c]}") - $c0) / $CLK_TCK")
        log "  every archive file ($ARCHIVE) made ${ARCHIVED[$c]} s after the build; $(calc "printf \"%.1f\", ${ARCHIVED_BYTES[$c]} / 1048576") MiB"
    fi
    cp "$D/tc/$c/stdout" "$D/servable/server-$c.stdout"
    stop_pid "${TC_PID[$c]}"
done

# ------------------------------------------------------------------ 4. links and runs
# enter_place lo|ns: stops the servers of the previous place, starts nginx and every
# tailcache instance in the new one and waits until each serves the whole closure.
stop_servers() {
    local c
    for c in "${!TC_PID[@]}"; do stop_pid "${TC_PID[$c]}"; done
    TC_PID=()
    [ -n "$NGINX_PID" ] && stop_pid "$NGINX_PID"
    NGINX_PID=""
}
NGINX_PIDS=()
enter_place() {
    local place=$1 port c i
    [ "$PLACE" = "$place" ] && [ -n "$NGINX_PID" ] && return
    stop_servers
    PLACE=$place
    if [ "$place" = lo ]; then
        HOST=127.0.0.1 SRV_EXEC=() CLI_EXEC=()
        port=$(free_port)
    else
        HOST=$SRV_IP SRV_EXEC=(ip netns exec "$SRV") CLI_EXEC=(ip netns exec "$CLI")
        port=8080
    fi
    nginx_conf "$D/nginx" "$D/www" "$HOST:$port"
    "${SRV_EXEC[@]}" "$NGINX" -p "$D/nginx" -e "$D/nginx/logs/error.log" -c "$D/nginx/nginx.conf" \
        > "$D/nginx/logs/stdout" 2>&1 &
    NGINX_PID=$!
    LIVE[$NGINX_PID]=1
    NGINX_URL=http://$HOST:$port
    for i in $(seq 100); do
        "${CLI_EXEC[@]}" curl -s -o /dev/null "$NGINX_URL/" && break
        kill -0 "$NGINX_PID" 2>/dev/null || { cat "$D/nginx/logs/"* >&2; die "nginx exited"; }
        sleep 0.1
    done
    NGINX_PIDS=("$NGINX_PID" $(ps -o pid= --ppid "$NGINX_PID"))
    for c in "${COMPS[@]+"${COMPS[@]}"}"; do
        start_tc "$c"
        wait_servable "$c" "${TC_URL[$c]}" > /dev/null
    done
    if [[ " $CONFIGS " == *" agent "* ]] && [ "$AGENT_SERVER" != none ]; then
        wait_manifests "${TC_URL[$AGENT_SERVER]}"
        ARCHIVE=$(archive_of "$AGENT_SERVER")
        [ -z "$ARCHIVE" ] || wait_archived "$ARCHIVE" "${TC_URL[$AGENT_SERVER]}" > /dev/null
    fi
    for c in none zstd xz; do
        [ -e "$D/www/$c/.complete" ] || continue
        [ "$(servable_count "$c" "$NGINX_URL/$c")" -eq "$NPATHS" ] || die "nginx does not serve the $c cache"
    done
    log "servers at $HOST: nginx $NGINX_URL, tailcache ${!TC_URL[*]}"
}

# Network namespaces for the shaped links: server and client joined by one veth.
make_namespaces() {
    ip netns add "$SRV"; NSS+=("$SRV")
    ip netns add "$CLI"; NSS+=("$CLI")
    ip -n "$SRV" link set lo up
    ip -n "$CLI" link set lo up
    ip -n "$SRV" link add name eth0 type veth peer name eth0 netns "$CLI"
    ip -n "$SRV" link set eth0 mtu "$MTU" gso_max_size "$MTU" gso_max_segs 1 up
    ip -n "$CLI" link set eth0 mtu "$MTU" gso_max_size "$MTU" gso_max_segs 1 up
    ip -n "$SRV" addr add "$SRV_IP/24" dev eth0
    ip -n "$CLI" addr add "$CLI_IP/24" dev eth0
}

rx_bytes() { ip netns exec "$CLI" cat /sys/class/net/eth0/statistics/rx_bytes; }
wchar() { # PID… → bytes written by these processes so far
    local p s=0 v
    for p in "$@"; do
        v=$(sed -n 's/^wchar: //p' "/proc/$p/io" 2>/dev/null || true)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}

cat > "$D/client.conf" <<EOF
build-users-group =
sandbox = false
substituters =
trusted-public-keys = $PUBKEY
require-sigs = true
experimental-features = nix-command
fsync-metadata = false
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
EOF
mkdir -p "$D/client-conf"
cp "$D/client.conf" "$D/client-conf/nix.conf"
: > "$D/client-conf/empty.conf"

AGENT_PID=""
# start_agent RUN: a new agent process on the client side in front of the AGENT_SERVER instance;
# sets AGENT_URL.
start_agent() {
    local dir=$1/agent url
    mkdir -p "$dir"
    cat > "$dir/agent.toml" <<EOF
[agent]
server = "${TC_URL[$AGENT_SERVER]}"
tracker = "$TRACKER"
bind = "127.0.0.1:0"
trusted_keys = ["$PUBKEY"]
cache_dir = "$CLIENT/agent-cache"
$AGENT_CONF
EOF
    "${CLI_EXEC[@]}" env NO_COLOR=1 RUST_LOG="$AGENT_LOG" "$BIN" agent --config "$dir/agent.toml" \
        > "$dir/stdout" 2> "$dir/stderr" &
    AGENT_PID=$!
    LIVE[$AGENT_PID]=1
    url=$(await_line "$dir/stdout" "$dir/stderr" '^agent listening on \(http://[0-9.]*:[0-9]*\)$' "$AGENT_PID" "the agent")
    "${CLI_EXEC[@]}" curl -sf -o /dev/null "$url/nix-cache-info" || die "the agent does not answer at $url"
    AGENT_URL=$url
}

TSV=("link	round	config	status	time_s	wire_bytes	server_written_bytes	link_rx_bytes	client_user_s	client_sys_s	agent_cpu_s	agent_range_bytes	paths")
FAILED=0
# run_one LINK ROUND CONFIG: one nix copy of the whole closure into a fresh store.
run_one() {
    local link=$1 round=$2 cfg=$3 dir=$D/runs/$1-$2-$3 url pids=() w0 w1 rx0=0 rx1=0 a0=0 a1=0
    local t0 t1 st=ok got=0 user=0 sys=0 agent_s=0 agent_range=0 wire
    mkdir -p "$dir"
    remove_workdir "$CLIENT" 0
    mkdir -p "$CLIENT/xdg-cache"
    case $cfg in
        nginx-*) url=$NGINX_URL/${cfg#nginx-}; pids=("${NGINX_PIDS[@]}") ;;
        tc-*) url=${TC_URL[${cfg#tc-}]}; pids=("${TC_PID[${cfg#tc-}]}") ;;
        agent)
            # What the agent measured on this link in an earlier round: the agent a person
            # runs knows the link it was used on; round 1 starts fresh.
            if [ -f "$D/measurements-$link.toml" ]; then
                mkdir -p "$CLIENT/agent-cache"
                cp "$D/measurements-$link.toml" "$CLIENT/agent-cache/measurements.toml"
            fi
            start_agent "$dir"; url=$AGENT_URL; pids=("${TC_PID[$AGENT_SERVER]}") ;;
    esac
    w0=$(wchar "${pids[@]}")
    [ "$link" = lo ] || rx0=$(rx_bytes)
    [ -n "$AGENT_PID" ] && a0=$(cpu_ticks "$AGENT_PID")
    t0=$(now)
    "${CLI_EXEC[@]}" env NIX_CONF_DIR="$D/client-conf" NIX_USER_CONF_FILES="$D/client-conf/empty.conf" \
        XDG_CACHE_HOME="$CLIENT/xdg-cache" \
        /usr/bin/time -f '%U %S' -o "$dir/time" timeout -k 10 "$FETCH_TIMEOUT" \
        nix copy --from "$url" --to "$CLIENT/store" "$TOP" > "$dir/copy.log" 2>&1 || st=nix-copy-failed
    t1=$(now)
    w1=$(wchar "${pids[@]}")
    [ "$link" = lo ] || rx1=$(rx_bytes)
    if [ -n "$AGENT_PID" ]; then
        a1=$(cpu_ticks "$AGENT_PID")
        # What the agent took from the server by Range requests (its P2P download path; a
        # plain proxy does not count here): shows which path the run exercised.
        agent_range=$("${CLI_EXEC[@]}" curl -sf "$AGENT_URL/metrics" \
            | awk '$1 == "tailcache_agent_server_bytes_total" { v = $2 } END { printf "%.0f", v + 0 }') || agent_range=0
        agent_s=$(calc "printf \"%.2f\", ($a1 - $a0) / $CLK_TCK")
        stop_pid "$AGENT_PID"
        AGENT_PID=""
        [ ! -f "$CLIENT/agent-cache/measurements.toml" ] || cp "$CLIENT/agent-cache/measurements.toml" "$D/measurements-$link.toml"
    fi
    read -r user sys < <(tail -1 "$dir/time" 2>/dev/null) || true
    [[ "$user" =~ ^[0-9.]+$ ]] || { user=0; [ "$st" = ok ] && st=no-rusage; }
    [[ "$sys" =~ ^[0-9.]+$ ]] || sys=0
    if [ "$st" = ok ]; then
        got=$(env NIX_CONF_DIR="$D/client-conf" NIX_USER_CONF_FILES="$D/client-conf/empty.conf" \
            XDG_CACHE_HOME="$CLIENT/xdg-cache" nix-store --store "$CLIENT/store" -qR "$TOP" 2>/dev/null | wc -l) || got=0
        [ "$got" -eq "$NPATHS" ] || st=incomplete-closure
    fi
    if [ "$link" = lo ]; then wire=$((w1 - w0)); else wire=$((rx1 - rx0)); fi
    local secs
    secs=$(calc "printf \"%.2f\", $t1 - $t0")
    TSV+=("$link	$round	$cfg	$st	$secs	$wire	$((w1 - w0))	$((rx1 - rx0))	$user	$sys	$agent_s	$agent_range	$got")
    if [ "$st" = ok ]; then
        log "  $link r$round $cfg: $secs s, $(calc "printf \"%.1f\", $wire / 1048576") MiB, CPU $(calc "printf \"%.1f\", $user + $sys + $agent_s") s"
    else
        FAILED=$((FAILED + 1))
        log "  $link r$round $cfg: FAILED ($st; $got of $NPATHS paths): $(tail -3 "$dir/copy.log" | tr '\n' ' ' | cut -c1-400)"
    fi
    remove_workdir "$CLIENT" 0
}

NOTES=()
RUN_LINKS=()
for link in $LINKS; do
    if [ "$link" = lo ]; then
        enter_place lo
    else
        if [ "$IS_ROOT" = 0 ]; then
            NOTES+=("- link ${link} Mbit/s skipped: shaped links need root (network namespaces and tc).")
            log "skipping the ${link} Mbit/s link: not root"
            continue
        fi
        [ ${#NSS[@]} -gt 0 ] || make_namespaces
        enter_place ns
        shape "$SRV" eth0 "$link" "$DELAY_MS"
        shape "$CLI" eth0 "$link" "$DELAY_MS"
    fi
    RUN_LINKS+=("$link")
    read -ra cfgs <<< "$CONFIGS"
    for r in $(seq "$ROUNDS"); do
        log "link $link, round $r of $ROUNDS"
        n=${#cfgs[@]}
        for i in $(seq 0 $((n - 1))); do
            run_one "$link" "$r" "${cfgs[$(((i + r - 1) % n))]}"
        done
    done
done
stop_servers

# ------------------------------------------------------------------ report
mkdir -p "$ROOT/bench-results"
stamp=$(date +%Y-%m-%d-%H%M%S)
out=$ROOT/bench-results/substitute-$stamp.md
printf '%s\n' "${TSV[@]}" > "${out%.md}.tsv"
ELAPSED=$(calc "printf \"%.0f\", $(now) - $START")

# table LINK: per configuration the medians over the successful rounds and the ratios of the
# medians to nginx-zstd's.
table() {
    awk -F'\t' -v link="$1" -v order="$CONFIGS" -v rounds="$ROUNDS" '
        function median(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function ratio(x, b) { return b > 0 ? sprintf("%.2f", x / b) : "n/a" }
        NR > 1 && $1 == link {
            c = $3; runs[c]++
            if ($4 != "ok") { failed[c]++; next }
            k = ++ok[c]; T[c, k] = $5; W[c, k] = $6; U[c, k] = $9 + $10 + $11
            if (!(c in lo) || $5 < lo[c]) lo[c] = $5
            if (!(c in hi) || $5 > hi[c]) hi[c] = $5
        }
        END {
            n = split(order, cs, " ")
            for (i = 1; i <= n; i++) {
                c = cs[i]
                if (!ok[c]) continue
                delete a; for (k = 1; k <= ok[c]; k++) a[k] = T[c, k]; t[c] = median(a, ok[c])
                delete a; for (k = 1; k <= ok[c]; k++) a[k] = W[c, k]; w[c] = median(a, ok[c])
                delete a; for (k = 1; k <= ok[c]; k++) a[k] = U[c, k]; u[c] = median(a, ok[c])
            }
            b = "nginx-zstd"; bt = (b in t) ? t[b] : 0; bw = (b in w) ? w[b] : 0; bu = (b in u) ? u[b] : 0
            for (i = 1; i <= n; i++) {
                c = cs[i]
                if (failed[c]) {
                    printf "| %s | FAILED (%d of %d runs) | | | | | | |\n", c, failed[c], runs[c]
                    continue
                }
                if (!ok[c]) continue
                printf "| %s | %.1f | %.1f–%.1f | %s | %.1f | %s | %.1f | %s |\n", c, t[c], lo[c], hi[c],
                    ratio(t[c], bt), w[c] / 1048576, ratio(w[c], bw), u[c], ratio(u[c], bu)
            }
        }' "${out%.md}.tsv"
}

mib() { calc "printf \"%.1f\", $1 / 1048576"; }
bin_note=" (built from this checkout)"
[ -n "${TAILCACHE_BIN:-}" ] && bin_note=" (given by TAILCACHE_BIN: its source is whatever built it)"
case $NETEM in
    yes) delay_note="netem ${DELAY_MS} ms one-way on each end (RTT $((2 * DELAY_MS)) ms)" ;;
    no) delay_note="**no added delay: netem is not available in this kernel** (RTT well under 1 ms)" ;;
    *) delay_note="no added delay" ;;
esac
{
    echo "# Substitution benchmark (stock Nix, whole closure)${LABEL:+ — $LABEL} — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Binary $BIN$bin_note; script from $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?');"
    echo "$(nix --version), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(nproc) CPUs, load $LOAD_START at the start and $(cut -d' ' -f1-3 /proc/loadavg) at the end, kernel $(uname -r)."
    echo "Closure: $NPATHS paths, NAR $(mib "$NAR_BYTES") MiB ($(cat "$D/closure/summary"); seed $SEED)."
    echo "Client: \`nix copy --from URL --to <fresh chroot store> <top>\`, require-sigs, default http-connections,"
    echo "fsync-metadata off, no narinfo cache; timed from start to done. $ROUNDS round(s), configurations interleaved"
    echo "(order rotated each round). Medians over the rounds; ratios = median / nginx-zstd's median on the same link."
    echo "Bytes: shaped links = client veth rx (TCP/IP headers included); lo = bytes written by the server processes"
    echo "(HTTP responses). CPU = user+sys of the nix copy process tree (+ the agent's CPU for \`agent\`)."
    echo "Shaped links: two network namespaces, one veth, MTU $MTU, GSO off, htb both directions, $QUEUE_PKTS-packet queues, $delay_note."
    [ -n "$TC_CACHE_CONF" ] && echo "tailcache [cache] extra: \`$(echo "$TC_CACHE_CONF" | tr '\n' ';')\`."
    echo "agent: in front of tailcache-$AGENT_SERVER (its P2P tracker on, no other peers)${AGENT_CONF:+, extra: \`$(echo "$AGENT_CONF" | tr '\n' ';')\`}."
    echo "Whole run: $ELAPSED s (closure, caches, servable measurements and all runs)."
    echo
    for link in "${RUN_LINKS[@]+"${RUN_LINKS[@]}"}"; do
        if [ "$link" = lo ]; then echo "## loopback"; else echo "## ${link} Mbit/s"; fi
        echo
        echo "| config | time s | min–max | ×nginx-zstd | MiB | ×nginx-zstd | client CPU s | ×nginx-zstd |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        table "$link"
        echo
    done
    echo "## Servable compressed after the build"
    echo
    echo "From triggering a build whose only step prints the closure's top path (the server queues the closure"
    echo "for compression, as after a real build) until every narinfo advertises the compressed file (polled every 0.1 s)."
    echo
    echo "| tailcache | seconds | s per GB of NAR | server CPU s per GB | files MiB | files/NAR | P2P manifests too, s |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for c in zstd xz; do
        if [ -z "${SERVABLE[$c]:-}" ]; then
            [[ " ${COMPS[*]-} " == *" $c "* ]] && echo "| $c | not measured (MEASURE_SERVABLE) | | | | | |"
            continue
        fi
        echo "| $c | ${SERVABLE[$c]} | $(calc "printf \"%.1f\", ${SERVABLE[$c]} / ($NAR_BYTES / 1e9)") | $(calc "printf \"%.1f\", ${SERVABLE_CPU[$c]} / ($NAR_BYTES / 1e9)") | $(mib "${SERVABLE_BYTES[$c]}") | $(calc "printf \"%.2f\", ${SERVABLE_BYTES[$c]} / $NAR_BYTES") | ${SERVABLE_P2P[$c]:-} |"
        [ -n "${ARCHIVED[$c]:-}" ] || continue
        echo "| $c, then every $ARCHIVE archive file | ${ARCHIVED[$c]} | $(calc "printf \"%.1f\", ${ARCHIVED[$c]} / ($NAR_BYTES / 1e9)") | $(calc "printf \"%.1f\", ${ARCHIVED_CPU[$c]} / ($NAR_BYTES / 1e9)") | $(mib "${ARCHIVED_BYTES[$c]}") | $(calc "printf \"%.2f\", ${ARCHIVED_BYTES[$c]} / $NAR_BYTES") | |"
    done
    for c in none zstd xz; do
        [ -n "${NGX_COPY_S[$c]:-}" ] || continue
        echo "| (for nginx: nix copy --to file://…?compression=$c) | ${NGX_COPY_S[$c]} | | | | | |"
    done
    if [ ${#NOTES[@]} -gt 0 ]; then
        echo
        printf '%s\n' "${NOTES[@]}"
    fi
} > "$out"
cat "$out"
log "written to $out (and ${out%.md}.tsv)"
[ "$FAILED" -eq 0 ] || die "$FAILED run(s) failed"
