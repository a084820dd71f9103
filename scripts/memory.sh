#!/usr/bin/env bash
# scripts/memory.sh [ENTRIES] [VALUE_BYTES] — bytes per entry, cache-manager against Redis,
# on the same keys and values (issue 15's figure): ENTRIES keys `key:0` … (default
# 1,000,000) with VALUE_BYTES-byte values (default 100), stored through each server's own
# protocol: HTTP PUTs (`cache-bench load --prefill`, raw bytes) for cache-manager
# (CACHE_CORES=1), `redis-cli --pipe` of SETs for Redis. Reports the RSS growth per entry
# (cache-manager's counted from a service bounded at one entry, so that what its bound
# makes resident at start counts too, and from after a second of the same kind of load
# on a few keys of their own, so that what the service holds once whatever the load does
# first has been done (connections' buffers, the write path's latency histogram) does
# not count: it is there at any count of entries),
# what of it is overhead beyond the key and value bytes, and Redis's own `used_memory`
# growth; for cache-manager also what it charges itself (`l1_bytes`, from ENTRY_OVERHEAD),
# which must stay within 10 % of what RSS shows. MEMORY_ENV adds settings to both
# services, e.g. MEMORY_ENV=CACHE_L1_HUGE_PAGES=false to measure in small pages.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

entries="${1:-1000000}"
value_bytes="${2:-100}"
install_missing redis-server:redis-server redis-cli:redis-tools
cargo build --release -q -p net -p bench-harness

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# The bytes of every key `key:0` … `key:N-1`.
key_bytes=$(awk -v n="$entries" 'BEGIN {for (i = 0; i < n; i++) total += 4 + length(i); print total}')
payload=$((key_bytes + entries * value_bytes))
per_entry() { awk -v d="$1" -v n="$entries" 'BEGIN {printf "%.1f", d / n}'; }
overhead() { awk -v d="$1" -v p="$payload" -v n="$entries" 'BEGIN {printf "%.1f", (d - p) / n}'; }

echo "$entries entries, keys key:0 … key:$((entries - 1)) (average $(awk -v k="$key_bytes" -v n="$entries" 'BEGIN {printf "%.1f", k / n}') bytes), $value_bytes-byte values"
printf '%-26s %16s %22s\n' "" "RSS growth/entry" "overhead/entry (RSS)"

# Keys the warm-up writes and reads before the count (`warm:0` …); they stay stored, and
# count in `before`.
warm_keys=64
# start_measured ENV... — starts a service with ENV and serves the prefill's connections
# a second of half reads, half writes of the prefill's value size to `warm_keys` keys of
# their own; sets `cm_pid` and `started_kib`, its RSS then. (Not a function whose output
# is captured: a subshell would lose the pid that cleanup stops.)
start_measured() {
    start_cache_manager CACHE_CORES=1 "$@"
    cm_pid=${pids[-1]}
    # What the service holds once it has served the load (its connections' buffers, the
    # pages of each operation's latency histogram that the load's latencies touch) comes
    # before the count, as its own start does: it does not grow with the entries, so it
    # is not theirs. Only reads had warmed it before 2026-12-05; the write path's share,
    # about 1 MB at any count, then counted as the entries' (1 byte an entry at 1 M).
    target/release/cache-bench load --target "http://127.0.0.1:$port" --keys "$warm_keys" \
        --key-prefix warm: --read-ratio 0.5 --value-size "$value_bytes" \
        --duration 1s --warmup 0s --quiet > /dev/null
    started_kib=$(rss_kib "$cm_pid")
}
# What a structure sized from the bound (a bucket array, a sketch) makes resident before
# any entry arrives is part of what the entries cost: it is the difference from the same
# service bounded at one entry.
start_measured CACHE_L1_MAX_ENTRIES=1 CACHE_L1_MAX_BYTES=1024 ${MEMORY_ENV:-}
one_entry_kib=$started_kib
kill "$cm_pid"
# Bounded at exactly ENTRIES and the warm-up's keys, as a cache sized for its data would
# be: the bucket array and the sketch are sized from the bound.
start_measured CACHE_L1_MAX_ENTRIES=$((entries + warm_keys)) \
    CACHE_L1_MAX_BYTES=$(((entries + warm_keys) * 1024)) ${MEMORY_ENV:-}
before=$started_kib
prefill "$port" "$entries" "$value_bytes"
after=$(rss_kib "$cm_pid")
echo "resident for the bound at start: $(per_entry $(((before - one_entry_kib) * 1024))) bytes an entry (counted below)"
grown=$(((after - one_entry_kib) * 1024))
charged=$(curl -sf "http://127.0.0.1:$port/api/cache/metrics" | python3 -c 'import json,sys; m = json.load(sys.stdin); print(m["l1_bytes"], m["l1_size"])')
printf '%-26s %16s %22s\n' "cache-manager" "$(per_entry "$grown")" "$(overhead "$grown")"

start_redis
redis_port=$port
redis_pid=${pids[-1]}
used() { redis-cli -p "$redis_port" info memory | awk -F: '/^used_memory:/ {print $2 + 0}'; }
before=$(rss_kib "$redis_pid")
used_before=$(used)
value=$(head -c "$value_bytes" /dev/zero | tr '\0' 'v')
awk -v n="$entries" -v v="$value" 'BEGIN {for (i = 0; i < n; i++) printf "SET key:%d %s\r\n", i, v}' \
    | redis-cli -p "$redis_port" --pipe > /dev/null
after=$(rss_kib "$redis_pid")
used_after=$(used)
grown=$(((after - before) * 1024))
printf '%-26s %16s %22s\n' "Redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)" "$(per_entry "$grown")" "$(overhead "$grown")"
printf '%-26s %16s %22s\n' "Redis (used_memory)" "$(per_entry $((used_after - used_before)))" "$(overhead $((used_after - used_before)))"

read -r l1_bytes l1_size <<< "$charged"
echo
echo "cache-manager charges itself $(awk -v b="$l1_bytes" -v n="$l1_size" 'BEGIN {printf "%.1f", b / n}') bytes an entry (l1_bytes over $l1_size entries: key, value (its head, the tag and version of a write through the service, is in the entry's flags without L2, 1 or 2 bytes before the value with it), ENTRY_OVERHEAD)"
