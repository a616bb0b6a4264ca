# benches/lib.sh — what the benchmark scripts share: log/die, the tailcache binary to measure
# (TAILCACHE_BIN or a fresh `cargo build --profile $TAILCACHE_PROFILE`, release by default), a
# private Nix configuration for throwaway chroot stores (no daemon, no substituters,
# signatures required), and removing the run's temp dir. Sourced, not run.

log() { printf '# %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

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

# remove_workdir DIR: removes a run's temp dir (builds leave read-only directories in the
# throwaway store), or with KEEP=1 says where it is.
remove_workdir() {
    local dir=$1
    if [ -n "$dir" ] && [ -d "$dir" ]; then
        if [ "${KEEP:-0}" = 1 ]; then
            log "kept $dir"
        else
            chmod -R u+w "$dir" 2>/dev/null || true
            rm -rf "$dir"
        fi
    fi
}
