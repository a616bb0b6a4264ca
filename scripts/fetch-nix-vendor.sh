#!/usr/bin/env bash
# Fetches the nixpkgs lib and home-manager commits the module tests are pinned to (see
# tests/common/modules.rs) from GitHub and packs them as the tests expect them:
# DIR/nixpkgs-lib.tar.xz (top directory nixpkgs-lib/) and DIR/home-manager.tar.xz (top
# directory home-manager/). Then: TAILCACHE_NIX_VENDOR=DIR cargo test --test nix_modules
# Needs network access, curl, tar and xz. The snapshots are test inputs, never committed here.
set -euo pipefail

dir="${1:?usage: scripts/fetch-nix-vendor.sh DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch() {
    local repo="$1" commit="$2" top="$3"
    local name="${repo#*/}"
    echo "# $repo $commit"
    curl -fsSL "https://github.com/$repo/archive/$commit.tar.gz" -o "$work/$top.tar.gz"
    mkdir -p "$work/x-$top"
    tar -xzf "$work/$top.tar.gz" -C "$work/x-$top"
    mv "$work/x-$top/$name-$commit" "$work/$top"
    tar -cJf "$dir/$top.tar.xz" -C "$work" "$top"
}

# Keep these in step with SNAPSHOTS in tests/common/modules.rs.
fetch nix-community/nixpkgs.lib de42d44212d207476489bce163375d8306a26d59 nixpkgs-lib
fetch nix-community/home-manager ec1a8fdf74ed3f276148ee106299a2ba0e65d51f home-manager
echo "wrote $dir/nixpkgs-lib.tar.xz and $dir/home-manager.tar.xz; export TAILCACHE_NIX_VENDOR=$dir"
