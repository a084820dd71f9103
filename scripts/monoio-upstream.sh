#!/usr/bin/env bash
# scripts/monoio-upstream.sh — runs monoio's own test suite against the copy this
# repository carries (vendor/monoio, six patches: vendor/monoio/PATCHES.md) and against
# the unchanged release of the same version, and fails if the carried copy fails a test
# the release passes. vendor/monoio holds the library only; its tests come from the
# release's package, which `cargo vendor` fetches from crates.io.
#
# Both trees are built with every feature but `unstable` (nightly only), so both
# drivers (io_uring and epoll) and the optional operations are covered. Some of
# upstream's tests fail on some machines whatever the patches (they resolve public host
# names, expect a permission error that root does not get, or use Unix sockets in ways
# the machine refuses), and three doc examples do not compile with every feature on:
# those fail in both trees, are listed, and do not fail the script (on this project's
# VMs, 233 pass and the same 19 fail in both). Not part of scripts/test.sh: the fork changes seldom, and this fetches and
# builds monoio twice (about two minutes on 2 cores). Run it after changing vendor/monoio.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' vendor/monoio/Cargo.toml | head -n 1)
mkdir -p "$work/fetch/src"
touch "$work/fetch/src/lib.rs"
cat > "$work/fetch/Cargo.toml" <<EOF
[package]
name = "fetch-monoio"
version = "0.0.0"
edition = "2021"

[dependencies]
monoio = "=$version"

[workspace]
EOF
(cd "$work/fetch" && cargo vendor --quiet "$work/crates" > /dev/null)
release="$work/crates/monoio"
carried="$work/carried"
cp -r "$release" "$carried"
rm -rf "$carried/src"
cp -r vendor/monoio/src "$carried/src"

features=$(sed -n '/^\[features\]/,/^\[/p' "$release/Cargo.toml" | sed -n 's/^\([a-z0-9_-]*\) = .*/\1/p' \
    | grep -v -x -e default -e unstable | tr '\n' ' ')
echo "monoio $version, features: $features"

# run TREE NAME — tests TREE; leaves NAME.failed (sorted failing tests) and prints a count.
run() {
    local tree=$1 name=$2
    (cd "$tree" && CARGO_TARGET_DIR="$work/target-$name" \
        cargo test --no-fail-fast --features "$features" > "$work/$name.log" 2>&1) || true
    grep -E '^test .* \.\.\. FAILED$' "$work/$name.log" | sed 's/ \.\.\. FAILED$//; s/^test //' \
        | sort -u > "$work/$name.failed"
    if grep -q '^error: could not compile' "$work/$name.log"; then
        grep -m 5 -E '^error' "$work/$name.log" >&2
        echo "$name: does not compile" >&2
        exit 1
    fi
    awk '/^test result:/ {passed += $4; failed += $6} END {printf "%s: %d passed, %d failed\n", name, passed, failed}' \
        name="$name" "$work/$name.log"
}
run "$release" release
run "$carried" carried

echo "failing in both (this machine, not the patches):"
comm -12 "$work/release.failed" "$work/carried.failed" | sed 's/^/  /'
regressions=$(comm -13 "$work/release.failed" "$work/carried.failed")
if [ -n "$regressions" ]; then
    echo "failing only in the carried copy:"
    echo "$regressions" | sed 's/^/  /'
    exit 1
fi
echo "the carried copy fails no test that the release passes"
