#!/usr/bin/env bash
# Builds the Debian package, target/debian/cache-manager_<version>-1_<arch>.deb, with
# cargo-deb (installed first, at a pinned version, if missing). Its contents are declared
# in net/Cargo.toml ([package.metadata.deb]); scripts/package-test.sh installs, runs and
# removes it. Extra arguments go to `cargo deb`.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version >/dev/null 2>&1; then
    echo "scripts/package.sh: installing cargo-deb $CARGO_DEB_VERSION"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
# Debug symbols go to their own -dbgsym package, as Debian ships them.
cargo deb -p net --locked --dbgsym "$@"
