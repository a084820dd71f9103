#!/usr/bin/env bash
# scripts/invalidation-pause.sh [ENTRIES] [ROUNDS] — what a large pattern invalidation
# costs the requests served beside it. One core (CACHE_CORES=1, pinned to CPU 0) holds
# ENTRIES keys `bulk:N` (default 1,000,000, 100-byte values) and 10,000 keys `key:N`;
# cache-bench on CPU 1 sends GETs of the `key:` keys, 5,000 a second over 4 connections
# (open loop, busy-polling its pacing), for 4 s; 1.5 s in, `{"pattern": "bulk:*"}` is
# invalidated. Each round runs twice: invalidating `bulk:*` (every entry of the bulk),
# and `none:*` (nothing matches: the same load and a near-instant invalidation, the
# baseline). Reports per round and as medians of ROUNDS (default 3): how long the
# invalidation took to answer, and the GETs' p99, p99.9 and longest latency.
# CACHE_MANAGER_BIN measures another build (default target/release/cache-manager).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

entries="${1:-1000000}"
rounds="${2:-3}"
cargo build --release -q -p net -p bench-harness
bench=target/release/cache-bench

# one PATTERN -> "seconds p99 p99.9 max" (µs) for a fresh server
one() {
    start_cache_manager --core 0 CACHE_CORES=1 CACHE_L1_MAX_ENTRIES=$((entries + 20000)) \
        CACHE_L1_MAX_BYTES=$((entries * 300 + 100000000))
    local url="http://127.0.0.1:$port" report="$work/load.json" took
    taskset -c 1 "$bench" load --target "$url" --prefill --duration 1ms --warmup 0s \
        --keys "$entries" --key-prefix bulk: --value-size 100 --quiet > /dev/null
    taskset -c 1 "$bench" load --target "$url" --prefill --duration 1ms --warmup 0s \
        --keys 10000 --value-size 100 --quiet > /dev/null
    taskset -c 1 "$bench" load --target "$url" --rate 5000 --connections 4 --duration 4s \
        --warmup 0s --keys 10000 --busy-poll --quiet --json "$report" > /dev/null &
    local load=$!
    sleep 1.5
    took=$(curl -s -o /dev/null -w '%{time_total}' -X POST "$url/api/cache/invalidate" \
        -H 'Content-Type: application/json' -d "{\"pattern\": \"$1\"}")
    wait "$load"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(sys.argv[2], r["p99_us"], r["p999_us"], r["max_us"])' \
        "$report" "$took"
}

declare -A results
for round in $(seq 1 "$rounds"); do
    for pattern in 'bulk:*' 'none:*'; do
        read -r took p99 p999 max <<< "$(one "$pattern")"
        echo "round $round, $pattern: answered in ${took} s; GETs p99 ${p99} µs, p99.9 ${p999} µs, longest ${max} µs"
        results[$pattern-took]+="$took " results[$pattern-p99]+="$p99 "
        results[$pattern-p999]+="$p999 " results[$pattern-max]+="$max "
    done
done
echo "medians of $rounds rounds, $entries bulk entries on one core:"
for pattern in 'bulk:*' 'none:*'; do
    echo "  $pattern: answered in $(echo "${results[$pattern-took]}" | median) s;" \
        "GETs p99 $(echo "${results[$pattern-p99]}" | median) µs," \
        "p99.9 $(echo "${results[$pattern-p999]}" | median) µs," \
        "longest $(echo "${results[$pattern-max]}" | median) µs"
done
