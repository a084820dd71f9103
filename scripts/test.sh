#!/usr/bin/env bash
# Runs every test cache-manager has: formatting, clippy, the workspace's tests (unit,
# property, end-to-end), the loom models, the engine's tests under valgrind, the
# Prometheus rules and Grafana dashboard (promtool), and the Debian package (built,
# installed on this machine, run and purged: needs root or passwordless sudo). Installs
# what the tests need first (redis-server and redis-tools, curl, chromium, g++,
# valgrind, prometheus for promtool; cargo-deb from crates.io) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# libfuzzer-sys, checked below with the fuzz targets, compiles libFuzzer's C++.
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# The dashboard's browser test (tests/tests/dashboard.rs) runs headless Chromium.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
    install="apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then
        as_root=(sh -c)
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo sh -c)
    else
        echo "scripts/test.sh: the tests need ${missing[*]}; install them with:" >&2
        echo "    sudo sh -c '$install'" >&2
        exit 1
    fi
    echo "scripts/test.sh: installing ${missing[*]}"
    installing=$SECONDS
    if ! "${as_root[@]}" "$install"; then
        echo "scripts/test.sh: could not install ${missing[*]}; run this and try again:" >&2
        echo "    sudo sh -c '$install'" >&2
        exit 1
    fi
    echo "scripts/test.sh: installing took $((SECONDS - installing)) s"
fi

# Each step says how long it took: the whole must stay well inside CI's 30 minutes.
step() {
    local started=$SECONDS
    "$@"
    echo "scripts/test.sh: $* took $((SECONDS - started)) s"
}
step cargo fmt --all --check
step cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets live in their own workspace (cargo-fuzz builds them with its flags,
# in scripts/fuzz.sh); checking them here keeps them in step with the code they call.
step cargo fmt --manifest-path fuzz/Cargo.toml --check
step cargo clippy --manifest-path fuzz/Cargo.toml --target-dir target/fuzz-check --all-targets -- -D warnings
step cargo test --workspace
# The same service on epoll, which it falls back to where io_uring is forbidden (Docker's
# default seccomp profile): the tests of everything that runs on the cores' executors.
step env CACHE_IO_DRIVER=epoll cargo test -p e2e --test http --test api --test warm --test origin --test cores
step scripts/loom.sh
# The engine's unsafe code under memcheck: a bounded run (scripts/memcheck.sh alone runs
# every case).
step scripts/memcheck.sh --quick
step scripts/check-deploy.sh
step scripts/package-test.sh
