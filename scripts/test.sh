#!/usr/bin/env bash
# Runs every check and test of tailcache on a fresh machine: installs what the tests need
# (Nix from the distribution's nix-bin package when it is missing), then formatting, clippy
# and the whole test suite, including the tests that drive the real Nix client.
set -euo pipefail
cd "$(dirname "$0")/.."

install_debian() {
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@"
}

missing=()
command -v nix-store >/dev/null 2>&1 || missing+=(nix-bin)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)      # independent decompressor in tests
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v git >/dev/null 2>&1 || missing+=(git)                # the build pipeline's fetch step
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)    # checks /metrics
command -v chromium >/dev/null 2>&1 || missing+=(chromium)      # loads the status page
command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)              # the CLI's terminal tests
[ -x /usr/bin/kill ] || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "# installing: ${missing[*]}"
        install_debian "${missing[@]}"
    else
        echo "error: the tests need ${missing[*]}; install Nix (https://nixos.org/download) and retry" >&2
        exit 1
    fi
fi
nix-store --version

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
