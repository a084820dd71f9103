#!/usr/bin/env bash
# Runs the engine's loom models of the lock-free read path (engine/src/loom_tests.rs).
# They build with `--cfg engine_loom` (a private cfg: `--cfg loom` would also switch
# dependencies that support loom) into their own target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:-} --cfg engine_loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
exec cargo test -p engine --lib --release --target-dir target/loom -- loom_tests "$@"
