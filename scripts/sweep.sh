#!/usr/bin/env bash
# scripts/sweep.sh [SLO] — the capacity of one core: the highest offered rate at which
# cache-manager meets a latency objective (default p99=1ms), as BENCHMARKS.md's "Capacity
# sweep" reports it.
#
# cache-manager runs on core 0 (CACHE_CORES=1, its defaults otherwise) and `cache-bench
# sweep` on core 1: GETs of 10,000 keys with 100-byte values over 64 connections, in open
# loop, 3-second steps after 1 s of warm-up, the rate doubling from 5,000 req/s until the
# objective breaks and then bisected 3 times. While it measures, the kernel threads
# allowed on every core are kept off core 0 (lib.sh's keep_kthreads_off, as syscalls.sh
# does; ISOLATE=0 leaves them be): at these rates the core is idle between requests, and
# a kernel thread that wakes there (kdamond runs for milliseconds at a time on this VM)
# stalls the requests behind it, so without this the tail measures those threads. A
# dedicated host gets the same from isolcpus. The load busy-polls (`--busy-poll`; BUSY_POLL=0
# paces on its 1 ms timer instead), so that neither its own wake-ups nor bursts of a
# millisecond's requests enter the figures. The table goes to stdout, the plot and the
# JSON report to target/sweep/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

slo="${1:-p99=1ms}"
out=target/sweep
mkdir -p "$out"
cargo build --release -q -p net -p bench-harness

if [ "${ISOLATE:-1}" = 1 ]; then
    echo -n "kernel threads kept off core 0 while measuring: "
    keep_kthreads_off 0
fi
load_pacing
start_cache_manager --core 0 CACHE_CORES=1
taskset -c 1 target/release/cache-bench sweep --target "http://127.0.0.1:$port" \
    --connections 64 --duration 3s --warmup 1s --prefill --slo "$slo" --from 5000 --bisect 3 "${pacing[@]}" \
    --quiet --json "$out/sweep.json" --plot "$out/sweep.svg"
