#!/usr/bin/env bash
# Runs the engine's unit, property and stress tests under valgrind's memcheck: any
# invalid read or write, use of uninitialised memory, or definite leak fails the run.
# The engine is where the unsafe code is (the lock-free table, reclamation, the policy's
# slots), and it has no I/O, so every test of it runs here.
#
#   scripts/memcheck.sh            every engine test, 256 property cases (about 15 min)
#   scripts/memcheck.sh --quick    16 property cases, and without the eviction policy's
#                                  own tests (hit-ratio workloads over safe code, 10 min
#                                  under valgrind; the policy still runs inside every
#                                  shard and cache test): for scripts/test.sh
#
# Extra arguments go to the test binaries (a test name filter, for example).
set -euo pipefail
cd "$(dirname "$0")/.."

cases=256
skip=()
if [ "${1:-}" = "--quick" ]; then
    cases=16
    skip=(--skip eviction::)
    shift
fi
command -v valgrind >/dev/null 2>&1 || {
    echo "scripts/memcheck.sh: needs valgrind (apt-get install valgrind)" >&2
    exit 1
}

# The test binaries of the engine, built once in their own target directory (debug,
# so that valgrind's reports name lines).
mapfile -t binaries < <(
    cargo test -p engine --no-run --target-dir target/memcheck 2>&1 |
        sed -n 's/^ *Executable .*(\(.*\))$/\1/p'
)
if ((${#binaries[@]} == 0)); then
    echo "scripts/memcheck.sh: no engine test binaries were built" >&2
    exit 1
fi
for binary in "${binaries[@]}"; do
    echo "memcheck: $(basename "$binary")"
    # Fair scheduling: valgrind runs one thread at a time, and by default a thread that
    # spins (the stress tests' readers) can keep the turn from the thread it waits for.
    PROPTEST_CASES=$cases valgrind --quiet --error-exitcode=99 --fair-sched=try --leak-check=full \
        --errors-for-leak-kinds=definite --show-leak-kinds=definite \
        "$binary" --test-threads=2 "${skip[@]}" "$@"
done
