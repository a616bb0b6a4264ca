# benches/lib.sh — what the benchmark scripts share: log/die, the tailcache binary to measure
# (TAILCACHE_BIN or a fresh `cargo build --release`), and a private Nix configuration for
# throwaway chroot stores (no daemon, no substituters, signatures required). Sourced, not run.

log() { printf '# %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# tailcache_bin ROOT: sets BIN to TAILCACHE_BIN, or builds the release binary of ROOT.
tailcache_bin() {
    local root=$1 target_dir
    if [ -n "${TAILCACHE_BIN:-}" ]; then
        BIN=$TAILCACHE_BIN
    else
        log "cargo build --release"
        (cd "$root" && cargo build --release --locked --quiet --bin tailcache) || die "cargo build failed"
        target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps \
            | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
        BIN=$target_dir/release/tailcache
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
